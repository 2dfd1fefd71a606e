#!/usr/bin/env python3
"""First contact with a GPU: prove unpaired's GPU paths against the CPU, then measure them, in one invocation.

Correctness first, the device under test against the CPU (where the project is tested):

- step: one CycleGAN training step from the CPU's weights and batch; its ten loss terms against the CPU step's, in
  fp32 with TF32 off (within 1e-4 relative), fp32 as PyTorch leaves it (cuDNN's TF32 convolutions: 1e-2), and bf16
  and fp16 autocast (finite, within 5 % or 0.01);
- resume: a run stopped by SIGINT at step 3 and resumed, against the same run uninterrupted, bit for bit (exported
  generators and final losses); and the run twice uninterrupted, which tells nondeterminism from a resume bug;
  each with PyTorch's defaults and with its deterministic algorithms (ops without one are named);
- FID and KID of the same generators scored on the device and on the CPU (within 1e-2 relative);
- a tiny study with ``unpaired run --jobs 2``: that it finishes, and on which device each run trained.

Then it measures: ``bench_train.py`` (rotated rounds against ``../shared/bench/reference_cyclegan.py``: s/iter at
256 px, ResNet-9, batch 1, for fp32, bf16 + channels_last and bf16 + channels_last + compile, peak memory each), the
time to score a horse2zebra-sized test split (130 + 130 synthetic images: horse2zebra has 120 + 140), and
``bench_study.py --jobs 4`` (four small runs sharing the device, aggregate throughput against one at a time).

    python benchmarks/gpu_check.py --json gpu.json                     # on a GPU machine: about 5 minutes on one H200
    python benchmarks/gpu_check.py --quick --device cpu --json x.json  # the harness itself on a CPU (the tests run it)

A loss term's difference is relative (absolute / 0.2 for terms under 0.2). On a CPU every comparison is the CPU
against itself, so each fp32 one must be exact: that checks the harness, not a GPU. The FID checks need the
Inception weights offline (``UNPAIRED_FID_WEIGHTS``), the measurements the reference step beside the project
(``--reference``); a part that cannot run is a failed row with its error, and the others still run. Exit status
1 when a check fails; the JSON and the table say which and by how much.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs for deterministic algorithms, set before CUDA starts

import torch
import yaml

from unpaired import hookimpl
from unpaired.config.resolved import resolve_variant
from unpaired.devices import describe_device, pick_device
from unpaired.evaluation.scoring import Scorer
from unpaired.plugin_api.components import TrainingProgress
from unpaired.plugin_api.registry import default_registry
from unpaired.storage.run_folder import RunFolder
from unpaired.training.parts import build_method, runtime_of
from unpaired.training.run import train_run
from unpaired.training.runtime import seed_everything

HERE = Path(__file__).resolve().parent
TOLERANCES = {"fp32 (TF32 off)": 1e-4, "fp32 (PyTorch's defaults)": 1e-2, "bf16": 5e-2, "fp16": 5e-2}
FID_TOLERANCE = 1e-2
CYCLEGAN_TFLOP_PER_ITER_256 = 1.9
"""The physical work of one CycleGAN iteration at 256 px, ResNet-9, batch 1 (forward and backward of all four nets)."""
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
"""Dense bf16 tensor-core peaks by GPU family (vendor figures, no sparsity)."""


def variant(size: int, blocks: int, precision: str = "fp32", **train: Any) -> dict[str, Any]:
    return {
        "data": {"name": "synthetic", "size": size, "n_train": 8, "n_test": 4},
        "generator": {"name": "resnet", "n_blocks": blocks, "ngf": 8 if size <= 64 else 64},
        "discriminator": {"name": "patchgan", "ndf": 8 if size <= 64 else 64},
        "train": {"precision": precision, "num_workers": 0, **train},
        "samples": 0,
        "eval": {"metrics": []},
    }


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@contextlib.contextmanager
def tf32(allowed: bool):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def one_step(spec: dict[str, Any], device: torch.device, state: dict[str, Any], batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    resolved = resolve_variant(spec, default_registry())
    method = build_method(resolved, device, batch[0].shape[-1])
    method.load_state_dict(copy.deepcopy(state))
    runtime = runtime_of(resolved, device)
    terms = method.train_step(*(runtime.to_device(images) for images in batch), TrainingProgress(0, 1, 1, 1))
    return {name: float(value.detach()) for name, value in terms.items()}


def step_check(device: torch.device, size: int, blocks: int) -> list[dict[str, Any]]:
    """The ten loss terms of one step on ``device`` against the CPU's, from the same weights and batch."""
    seed_everything(0)
    cpu = torch.device("cpu")
    spec = variant(size, blocks)
    state = build_method(resolve_variant(spec, default_registry()), cpu, size).state_dict()
    state = copy.deepcopy(state)
    generator = torch.Generator().manual_seed(0)
    batch = (torch.rand(1, 3, size, size, generator=generator) * 2 - 1, torch.rand(1, 3, size, size, generator=generator) * 2 - 1)
    with tf32(False):
        expected = one_step(spec, cpu, state, batch)
    rows = []
    for name, precision, allow_tf32 in [
        ("fp32 (TF32 off)", "fp32", False),
        ("fp32 (PyTorch's defaults)", "fp32", True),
        ("bf16", "bf16", True),
        ("fp16", "fp16", True),
    ]:
        if precision == "fp16" and device.type == "cpu":
            continue  # fp16 autocast with grad scaling is a GPU path
        with tf32(allow_tf32 if device.type == "cuda" else False):
            got = one_step(variant(size, blocks, precision), device, state, batch)
        worst = max(relative(got[k], expected[k]) if abs(expected[k]) > 0.2 else abs(got[k] - expected[k]) / 0.2 for k in expected)
        finite = all(math.isfinite(v) for v in got.values())
        rows.append(
            {"check": f"step {name}", "measured": worst, "tolerance": TOLERANCES[name], "passed": finite and worst <= TOLERANCES[name], "terms": got}
        )
    rows.insert(0, {"check": "step on the CPU (expected)", "measured": 0.0, "tolerance": 0.0, "passed": True, "terms": expected})
    return rows


class StopAt:
    """Sends this process SIGINT when training reaches global step ``step``: the run checkpoints and stops."""

    def __init__(self, step: int):
        self.step = step

    @hookimpl
    def unpaired_on_step(self, run: Any, epoch: int, step: int, losses: Any, lr: float) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def trained(spec: dict[str, Any], folder: Path, stop_at: int | None = None) -> dict[str, Any]:
    """Train ``spec`` in ``folder`` (stopped at ``stop_at`` and resumed, when given): its generators and final losses."""
    registry = default_registry()
    resolved = resolve_variant(spec, registry)
    if stop_at is not None:
        with registry.listening(StopAt(stop_at)):
            stopped = train_run(resolved, RunFolder(folder), registry, show_progress=False)
        if stopped.outcome != "interrupted":
            raise RuntimeError(f"the run was to stop at step {stop_at}, but was {stopped.outcome} {stopped.detail}")
    result = train_run(resolved, RunFolder(folder), registry, show_progress=False).result
    if result is None or not result.finished:
        raise RuntimeError(f"the run did not finish: {result.error if result else 'no result'}")
    generators = {d: torch.load(RunFolder(folder).generator_path(d), weights_only=False)["state_dict"] for d in ("AtoB", "BtoA")}
    return {"generators": generators, "losses": result.final_losses}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["losses"] == b["losses"] and all(
        torch.equal(a["generators"][d][k], b["generators"][d][k]) for d in a["generators"] for k in a["generators"][d]
    )


def resume_check(device: torch.device, folder: Path) -> list[dict[str, Any]]:
    """Resumed == uninterrupted, and uninterrupted == uninterrupted, with the defaults and with deterministic algorithms."""
    spec = variant(32, 1, device=str(device), epochs=2, decay_epochs=0, log_every=1)  # log_every: the step hook every step
    rows = []
    for mode in ("defaults", "deterministic"):
        torch.use_deterministic_algorithms(mode == "deterministic", warn_only=True)
        torch.backends.cudnn.deterministic = mode == "deterministic"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            whole, again = trained(spec, folder / mode / "whole"), trained(spec, folder / mode / "again")
            resumed = trained(spec, folder / mode / "resumed", stop_at=3)
        nondeterministic = sorted({str(w.message).split(" does not have a deterministic")[0] for w in caught if "deterministic" in str(w.message)})
        rows.append({"check": f"rerun identical ({mode})", "measured": float(not same(whole, again)), "tolerance": 0.0, "passed": same(whole, again)})
        rows.append(
            {
                "check": f"resume bit-exact ({mode})",
                "measured": float(not same(whole, resumed)),
                "tolerance": 0.0,
                "passed": same(whole, resumed),
                "nondeterministic_ops": nondeterministic,
            }
        )
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    return rows


def scores_on(device: torch.device, size: int, n_test: int, translators: dict[str, torch.nn.Module], cache: Path) -> tuple[dict[str, float], float]:
    """FID and KID of ``translators`` on the synthetic test split, scored on ``device`` with its own feature cache."""
    spec = variant(size, 1)
    spec["data"] |= {"n_test": n_test}
    spec["eval"] = {"metrics": ["fid", "kid"]}
    resolved = resolve_variant(spec, default_registry())
    os.environ["UNPAIRED_CACHE"] = str(cache / device.type)
    data = resolved.data.build()
    moved = {d: copy.deepcopy(g).to(device) for d, g in translators.items()}
    started = time.perf_counter()
    scores = Scorer(resolved.eval, device).score(moved, data, resolved.data.as_dict())
    return scores.values, time.perf_counter() - started


def fid_check(device: torch.device, folder: Path, quick: bool) -> list[dict[str, Any]]:
    size, blocks = (32, 1) if quick else (128, 9)
    seed_everything(0)
    method = build_method(resolve_variant(variant(size, blocks), default_registry()), torch.device("cpu"), size)
    translators = {d: method.networks[method.translator(d)].eval() for d in ("AtoB", "BtoA")}
    on_cpu, _ = scores_on(torch.device("cpu"), size, 16, translators, folder)
    on_device, _ = scores_on(device, size, 16, translators, folder)
    rows = []
    for column in ("fid_a2b", "fid_b2a", "kid_a2b", "kid_b2a"):
        measured = relative(on_device[column], on_cpu[column])
        rows.append(
            {"check": f"{column} on the device vs the CPU", "measured": measured, "tolerance": FID_TOLERANCE, "passed": measured <= FID_TOLERANCE}
        )
    return rows


def jobs_check(folder: Path, quick: bool) -> list[dict[str, Any]]:
    """A 2-variant study with ``--jobs 2``: it finishes, and says where each run trained."""
    study = {
        "name": "gpu-jobs",
        "base": variant(32, 1, epochs=1, decay_epochs=0),
        "grid": {"generator.n_blocks": [1, 2]},
        "seeds": [0],
        "tracking": {"enabled": False},
    }
    (folder / "jobs.yaml").write_text(yaml.safe_dump(study))
    command = [
        str(Path(sys.executable).with_name("unpaired")),
        "run",
        str(folder / "jobs.yaml"),
        "--jobs",
        "2",
        "--quiet",
        "--out",
        str(folder / "jobs"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    devices = sorted({json.loads(p.read_text()).get("device", "") for p in (folder / "jobs").glob("*/*/result.json")})
    passed = done.returncode == 0 and len(list((folder / "jobs").glob("*/*/result.json"))) == 2
    return [{"check": "study with --jobs 2", "measured": float(done.returncode), "tolerance": 0.0, "passed": passed, "devices": devices}]


def measurements(device: torch.device, folder: Path, quick: bool, reference: Path) -> dict[str, Any]:
    """bench_train's rotated rounds against the reference, FID time on a horse2zebra-sized split, and --jobs 4."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUBLAS_WORKSPACE_CONFIG", "UNPAIRED_CACHE")}
    if quick:
        bench_args = [
            "--size",
            "32",
            "--blocks",
            "1",
            "--iters",
            "1",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--settings",
            "fp32",
            "--methods",
            "cyclegan",
        ]
    else:
        bench_args = ["--size", "256", "--blocks", "9", "--iters", "10", "--warmup", "3", "--rounds", "3", "--methods", "cyclegan"]
        bench_args += ["--settings", "fp32", "bf16+cl", "bf16+cl+compile"]
    command = [sys.executable, str(HERE / "bench_train.py"), *bench_args, "--device", str(device), "--reference", str(reference)]
    subprocess.run([*command, "--json", str(folder / "bench.json")], check=True, env=env, timeout=420)
    bench = json.loads((folder / "bench.json").read_text())
    size, n_test = (32, 4) if quick else (256, 130)
    seed_everything(0)
    method = build_method(resolve_variant(variant(size, 1 if quick else 9), default_registry()), torch.device("cpu"), size)
    translators = {d: method.networks[method.translator(d)].eval() for d in ("AtoB", "BtoA")}
    _, fid_seconds = scores_on(device, size, n_test, translators, folder / "timing")
    report: dict[str, Any] = {"bench_train": bench, "fid_seconds": {"images": 2 * n_test, "size": size, "seconds": fid_seconds}}
    if not quick:
        subprocess.run(
            [sys.executable, str(HERE / "bench_study.py"), "--jobs", "4", "--json", str(folder / "study.json")], check=True, env=env, timeout=420
        )
        report["jobs_4"] = json.loads((folder / "study.json").read_text())
    peak = next((tflops for family, tflops in BF16_PEAK_TFLOPS.items() if family in bench["device"]), None)
    for row in bench["engine"]:
        achieved = CYCLEGAN_TFLOP_PER_ITER_256 / row["s_per_iter"] if size == 256 else None
        row["tflops"] = achieved
        row["fraction_of_bf16_peak"] = achieved / peak if achieved and peak else None
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device under test (cpu: the harness against itself)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and no long measurements: to check the script itself")
    parser.add_argument("--skip", nargs="*", default=[], choices=["step", "resume", "fid", "jobs", "measure"], help="parts left out")
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--reference", type=Path, default=HERE.parents[1] / "shared" / "bench" / "reference_cyclegan.py")
    args = parser.parse_args()
    device = pick_device(args.device)
    report: dict[str, Any] = {"device": describe_device(device), "torch": torch.__version__, "cuda": torch.version.cuda, "checks": []}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        parts = {
            "step": lambda: step_check(device, 32 if args.quick else 128, 1 if args.quick else 9),
            "resume": lambda: resume_check(device, folder / "resume"),
            "fid": lambda: fid_check(device, folder / "fid", args.quick),
            "jobs": lambda: jobs_check(folder, args.quick),
        }
        for part, check in parts.items():
            if part in args.skip:
                continue
            started = time.perf_counter()
            try:
                rows = check()
            except Exception as error:  # a broken path is a finding, not the end of the check
                rows = [{"check": part, "measured": math.nan, "tolerance": 0.0, "passed": False, "error": f"{type(error).__name__}: {error}"}]
            for row in rows:
                row["seconds"] = time.perf_counter() - started
            report["checks"] += rows
            args.json.write_text(json.dumps(report, indent=1, default=str))  # what was found so far, if a later part hangs
        if "measure" not in args.skip:
            try:
                report["measurements"] = measurements(device, folder, args.quick, args.reference)
            except Exception as error:  # recorded: the checks above still stand
                report["measurements"] = {"error": f"{type(error).__name__}: {error}"}
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"{report['device']}, torch {report['torch']}, CUDA {report['cuda']}")
    print(f"{'check':<44}{'measured':>12}{'tolerance':>12}  result")
    for row in report["checks"]:
        extra = row.get("error") or ", ".join(row.get("nondeterministic_ops", []) or row.get("devices", []))
        print(f"{row['check']:<44}{row['measured']:>12.3g}{row['tolerance']:>12.3g}  {'ok' if row['passed'] else 'FAILED'} {extra}".rstrip())
    for row in report.get("measurements", {}).get("bench_train", {}).get("engine", []):
        fraction = f", {row['fraction_of_bf16_peak']:.1%} of bf16 peak" if row.get("fraction_of_bf16_peak") else ""
        print(
            f"{row['setting']:<20} {row['s_per_iter']:.4f} s/iter, {row['speedup']:.2f}x the reference, peak {row['peak_mib'] or 0:.0f} MiB{fraction}"
        )
    if "error" in report.get("measurements", {}):
        print(f"measurements: {report['measurements']['error']}")
    elif "measurements" in report:
        fid = report["measurements"]["fid_seconds"]
        print(f"FID + KID of {fid['images']} test images at {fid['size']} px: {fid['seconds']:.1f} s")
        if "jobs_4" in report["measurements"]:
            print(f"--jobs 4 on one device: {report['measurements']['jobs_4']['speedup']:.2f}x the aggregate throughput of --jobs 1")
    return 0 if all(row["passed"] for row in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
