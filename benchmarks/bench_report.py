#!/usr/bin/env python3
"""How long ``unpaired report`` takes for a study of the paper's size: 20 runs of 256 px ResNet-9 generators.

The run folders are made up, not trained (what a report reads is the same): each run gets its resolved
spec, a history of ``--epochs`` epochs, a result with FID/KID, and the runs of the seed the report
translates with get exported generators (freshly initialised, so the pictures are noise: only the time
counts) and the showcase a trained run saves when it ends. Then the HTML and the Markdown reports are
written, each timed; and the visual comparison once more without the showcases (runs trained before they
were saved), when every generator is rebuilt to translate 6 test images per direction.

    python benchmarks/bench_report.py                           # 10 variants x 2 seeds, 256 px, CPU
    python benchmarks/bench_report.py --variants 7 --seeds 3 --size 128 --json report-bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from unpaired.config.study import plan_study
from unpaired.plugin_api.registry import default_registry
from unpaired.reporting import write_report
from unpaired.reporting.comparison import visual_comparison
from unpaired.storage.records import ExportedGenerator
from unpaired.plugin_api.lifecycle import RunResult
from unpaired.results.study_folder import run_folder, write_index
from unpaired.results.study_results import read_study_results
from unpaired.training.parts import build_method, runtime_of
from unpaired.devices import pick_device
from unpaired.training.samples import save_showcase


def make_study(out: Path, variants: int, seeds: int, size: int, epochs: int) -> None:
    """The folders of a finished study with ``variants`` x ``seeds`` runs (see the module docstring)."""
    registry, rng = default_registry(), random.Random(0)
    spec = {
        "name": "bench-report",
        "question": "How fast is the report?",
        "base": {"data": {"name": "synthetic", "size": size, "n_train": 10, "n_test": 50}, "eval": {"every": 10}},
        "grid": {"train.lr": [round(2e-4 * (1 + i / 10), 6) for i in range(variants)]},
        "seeds": list(range(seeds)),
        "tracking": {"enabled": False},
    }
    study = plan_study(spec, registry, "bench")
    write_index(study, out, {})
    first = study.runs[0].resolved
    data = first.data.build()
    model, runtime = build_method(first, torch.device("cpu"), data.transform.crop_size), runtime_of(first, torch.device("cpu"))
    exported: dict[str, Path] = {}
    for run in study.runs:
        folder = run_folder(out, run)
        folder.path.mkdir(parents=True)
        folder.write_spec(run.resolved.as_dict())
        folder.write_history(
            [
                {
                    "epoch": e,
                    "lr": 2e-4,
                    **{t: 2 / e + rng.random() for t in ("cycle_A", "cycle_B", "G_adv_A", "G_adv_B", "D_A", "D_B")},
                    **({"fid_mean": 300 / e + rng.random()} if e % 10 == 0 else {}),
                }
                for e in range(1, epochs + 1)
            ]
        )
        if run.seed == 0:
            for direction in model.directions:
                network = model.translator(direction)
                if direction not in exported:  # one set of weights, linked into every folder: the same bytes to read
                    folder.export_generator(
                        ExportedGenerator(
                            direction,
                            run.run_id,
                            run.resolved.generator.as_dict(),
                            run.resolved.generator_norm.as_dict(),
                            size,
                            model.networks[network].state_dict(),
                        )
                    )
                    exported[direction] = folder.generator_path(direction)
                else:
                    folder.generator_path(direction).parent.mkdir(parents=True, exist_ok=True)
                    os.link(exported[direction], folder.generator_path(direction))
            save_showcase(model, runtime, data, folder)  # as a trained run does when it ends
        fid = 60 + rng.gauss(0, 3)
        folder.write_result(
            RunResult(
                status="finished",
                run_id=run.run_id,
                epochs=epochs,
                steps=epochs * 1000,
                seconds=3600.0,
                metrics={"fid_mean": fid, "kid_mean": fid / 4000, "fid_mean_best": fid - 2},
                device="cpu",
            )
        )


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "study"
        made = timed(lambda: make_study(out, args.variants, args.seeds, args.size, args.epochs))
        html = timed(lambda: write_report(out, default_registry(), device=device))
        markdown = timed(lambda: write_report(out, default_registry(), fmt="markdown", device=device))
        size_mib = (out / "report.html").stat().st_size / 2**20
        for showcase in out.glob("*/*/showcase.pt"):  # runs trained before showcases were saved: generators rebuilt
            showcase.unlink()
        rebuilding = timed(lambda: visual_comparison(read_study_results(out), default_registry(), 0, device))
    figures = {
        "runs": args.variants * args.seeds,
        "variants": args.variants,
        "size": args.size,
        "epochs": args.epochs,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "html_s": round(html, 2),
        "markdown_s": round(markdown, 2),
        "visual_comparison_rebuilding_s": round(rebuilding, 2),
        "html_mib": round(size_mib, 2),
        "setup_s": round(made, 2),
    }
    print(
        f"{figures['runs']} runs ({args.variants} variants), {args.size} px, {args.epochs} epochs, {device}, "
        f"{figures['threads']} threads: HTML report {html:.1f} s ({size_mib:.1f} MiB), Markdown {markdown:.1f} s; "
        f"without the runs' saved showcases, the visual comparison alone takes {rebuilding:.1f} s (every generator rebuilt)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
