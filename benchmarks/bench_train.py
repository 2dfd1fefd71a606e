#!/usr/bin/env python3
"""Training-step speed of the engine against the reference CycleGAN step, measured in one invocation.

Times ``CycleGAN.train_step`` (the code path ``unpaired run`` uses) for each chosen setting, and
``../shared/bench/reference_cyclegan.py`` (a plain eager fp32 step with the official per-step
work) before and after them, on the same random batches' shapes. Warm-up steps are excluded.

    python benchmarks/bench_train.py --quick                      # 128 px, ResNet-9: fp32, bf16, bf16 + channels_last
    python benchmarks/bench_train.py --size 256 --settings fp32 bf16+cl+compile --iters 20 --json out.json
    python benchmarks/bench_train.py --loader --size 256          # also: data decode + augment rate

A setting is ``fp32``, ``bf16`` or ``fp16``, optionally with ``+cl`` (channels_last) and
``+compile``. ``speedup`` is reference s/iter divided by the engine's: above 1 is faster.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unpaired.components import LossWeights
from unpaired.data import EpochOrder, TrainPairs
from unpaired.engine import CycleGAN, pick_device, seed_everything
from unpaired.registry import default_registry
from unpaired.spec import TrainConfig, resolve_variant

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "bench" / "reference_cyclegan.py"


def variant_for(args: argparse.Namespace, setting: str) -> dict:
    precision, *flags = setting.split("+")
    return {
        "data": {"name": "synthetic", "size": args.size, "n_train": 8, "n_test": 2},
        "generator": {"name": "resnet", "n_blocks": args.blocks},
        "discriminator": {"name": args.disc},
        "train": {"precision": precision, "channels_last": "cl" in flags, "compile": "compile" in flags, "batch_size": args.batch},
        "eval": {"fid": False},
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_engine(args: argparse.Namespace, setting: str, device: torch.device) -> dict:
    registry = default_registry()
    variant = resolve_variant(variant_for(args, setting), registry)
    seed_everything(0)
    model = CycleGAN(variant, registry, device)
    weights = LossWeights(1.0, 10.0, 5.0)
    batches = [tuple(model.to_device(torch.rand(args.batch, 3, args.size, args.size) * 2 - 1) for _ in range(2)) for _ in range(4)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup):
        model.train_step(*batches[step % 4], weights)
    synchronize(device)
    started = time.perf_counter()
    for step in range(args.iters):
        terms = model.train_step(*batches[step % 4], weights)
    synchronize(device)
    seconds = (time.perf_counter() - started) / args.iters
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"setting": setting, "s_per_iter": seconds, "peak_mib": peak, "losses": [round(v, 4) for v in terms.tolist()]}


def time_reference(args: argparse.Namespace, device: torch.device) -> dict:
    command = [sys.executable, str(args.reference), "--size", str(args.size), "--blocks", str(args.blocks),
               "--batch", str(args.batch), "--iters", str(args.iters), "--warmup", str(args.warmup), "--device", str(device)]
    if device.type == "cuda":  # the reference does not report memory: measure it in a child that imports it
        command = [sys.executable, "-c", _REFERENCE_WITH_MEMORY, *command[1:]]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


_REFERENCE_WITH_MEMORY = """
import json, runpy, sys, io, contextlib, torch
path, sys.argv = sys.argv[1], sys.argv[1:]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    runpy.run_path(path, run_name="__main__")
row = json.loads(out.getvalue().strip().splitlines()[-1])
row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(row))
"""


def loader_rate(args: argparse.Namespace) -> dict:
    """Decode + augment rate of the folder dataset (load_size 286/256 x size, random crop) with the
    default loader workers, reading the files each time and from the in-memory cache."""
    from unpaired.data import export_folder_layout

    registry = default_registry()
    workers = TrainConfig().num_workers
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        load = round(args.size * 286 / 256)
        synthetic = registry.build("dataset", {"name": "synthetic", "size": load, "n_train": 64, "n_test": 2})
        export_folder_layout(synthetic, Path(folder))
        for cache in (False, True):
            data = registry.build("dataset", {"name": "folder", "root": folder, "load_size": load, "crop_size": args.size, "cache": cache})
            loader = torch.utils.data.DataLoader(TrainPairs(data), batch_size=1, sampler=EpochOrder(64, 0, 0), num_workers=workers)
            started = time.perf_counter()
            count = sum(1 for _ in loader)
            rates["cached" if cache else "from_files"] = count / (time.perf_counter() - started)
    return {"pairs_per_s": rates, "workers": workers, "size": args.size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 px, ResNet-9, batch 1: fp32, bf16, bf16+cl, 3 timed steps")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--disc", default="patchgan", choices=["patchgan", "pooled"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--settings", nargs="+", default=["fp32", "bf16", "bf16+cl"])
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--loader", action="store_true", help="also measure the data loader's pairs/s")
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.size, args.blocks, args.batch, args.iters, args.warmup = 128, 9, 1, 3, 1
    device = pick_device(args.device)

    before = time_reference(args, device)
    rows = [time_engine(args, setting, device) for setting in args.settings]
    after = time_reference(args, device)
    reference = (before["s_per_iter"] + after["s_per_iter"]) / 2
    for row in rows:
        row["speedup"] = reference / row["s_per_iter"]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "size": args.size, "blocks": args.blocks, "disc": args.disc, "batch": args.batch, "iters": args.iters,
        "reference_s_per_iter": reference, "reference_runs": [before["s_per_iter"], after["s_per_iter"]],
        "reference_peak_mib": before.get("peak_mib"),
        "engine": rows,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.loader:
        report["loader"] = loader_rate(args)

    print(f"{report['device']}, torch {report['torch']}, {args.size} px, ResNet-{args.blocks}, {args.disc}, batch {args.batch}")
    print(f"{'setting':<18}{'s/iter':>10}{'it/s':>8}{'speedup':>9}{'peak MiB':>10}")
    print(f"{'reference':<18}{reference:>10.4f}{1 / reference:>8.2f}{1.0:>9.2f}{report['reference_peak_mib'] or float('nan'):>10.0f}")
    for row in rows:
        print(f"{row['setting']:<18}{row['s_per_iter']:>10.4f}{1 / row['s_per_iter']:>8.2f}{row['speedup']:>9.2f}{row['peak_mib'] or float('nan'):>10.0f}")
    if args.loader:
        rates = report["loader"]["pairs_per_s"]
        print(f"loader, {report['loader']['workers']} workers, {args.size} px: {rates['from_files']:.1f} pairs/s from files, "
              f"{rates['cached']:.1f} pairs/s cached (training steps: {1 / min(r['s_per_iter'] for r in rows):.2f}/s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
