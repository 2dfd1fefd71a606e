#!/usr/bin/env python3
"""A GPU's check: prove unpaired's GPU paths against the CPU and against themselves, then measure them, in one
invocation bounded in time.

Correctness first:

- step: one CycleGAN training step from the CPU's weights and batch; its ten loss terms against the CPU step's, in
  fp32 with TF32 off (within 1e-4 relative), fp32 as PyTorch leaves it (cuDNN's TF32 convolutions: 1e-2), and bf16
  and fp16 autocast (finite, within 5 % or 0.01);
- graphs: CycleGAN, CUT and FastCUT, 50 steps captured as a CUDA graph against 50 eager steps from the same state and
  batches: each loss term's mean over the steps within 5 %, and the final weights finite;
- resume: a run stopped by SIGINT and resumed, against the same run uninterrupted, bit for bit (exported generators
  and final losses), and the run twice uninterrupted, which tells nondeterminism from a resume bug; with the defaults
  (cuDNN autotuning: equal only in distribution is the promise), with ``train.deterministic`` (ops without a
  deterministic kernel are named), and with CUDA graphs under ``train.deterministic`` (stopped after the capture);
- FID and KID of the same generators scored on the device and on the CPU (within 1e-2 relative);
- a tiny study with ``unpaired run --jobs 2``: that it finishes, and on which device each run trained.

Then it measures: ``bench_train.py`` (rotated rounds against ``../shared/bench/reference_cyclegan.py``: s/iter at
256 px, ResNet-9, batch 1, for fp32 and bf16 + channels_last, each eager and captured, peak memory each),
``bench_study.py`` (4 paper-sized runs one at a time and packed 4 to a GPU, taking turns and through CUDA MPS:
aggregate iterations per second) and the time to score a horse2zebra-sized test split (130 + 130 synthetic images:
horse2zebra has 120 + 140), and prints them against the targets (one run, bf16 + graphs: 20 ms per iteration; 4 packed runs: 11 ms per iteration
together; FID of 260 images: 15 s). Last come two measurements of what is left to cut: ``profile_step.py`` for bf16 +
channels_last eager and captured (the kernels of one step by kind, and the share of its time the device is busy), and
bench_train's captured step with the networks compiled inside it (``bf16+cl+compile+graphs``, beside
``bf16+cl+graphs`` and ``bf16+graphs``, without channels_last; a GPU part only: compiling takes minutes on a CPU).

    python benchmarks/gpu_check.py --json gpu.json                     # on a GPU machine: about 6 minutes on one H200
    python benchmarks/gpu_check.py --quick --device cpu --json x.json  # the harness itself on a CPU (the tests run it)
    python benchmarks/gpu_check.py --skip step graphs resume bench_train bench_study fid jobs --json left.json
                                        # only what is left to cut: the scoring time, the profiles, the compiled step

The parts run one after another, the most telling first, within ``--budget`` seconds in all (6 minutes): when time
runs out, the part that was running is named in its row and the rest are left out. A loss term's difference is
relative (absolute / 0.2 for terms under 0.2). On a CPU every comparison is the CPU against itself, so each fp32 one
must be exact: that checks the harness, not a GPU. The FID checks need the Inception weights offline
(``UNPAIRED_FID_WEIGHTS``), the measurements the reference step beside the project (``--reference``); a part that
cannot run is a failed row with its error, and the others still run. The JSON is rewritten after every part. Exit
status 1 when a check fails; the JSON and the table say which and by how much.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from unpaired import hookimpl
from unpaired.config.resolved import resolve_variant
from unpaired.devices import describe_device, gpu_algorithms, pick_device
from unpaired.evaluation.scoring import Scorer
from unpaired.plugin_api.components import TrainingProgress
from unpaired.plugin_api.registry import default_registry
from unpaired.storage.run_folder import RunFolder
from unpaired.training.graphs import StepRunner
from unpaired.training.parts import build_method, runtime_of
from unpaired.training.run import train_run
from unpaired.training.runtime import seed_everything

HERE = Path(__file__).resolve().parent
TOLERANCES = {"fp32 (TF32 off)": 1e-4, "fp32 (PyTorch's defaults)": 1e-2, "bf16": 5e-2, "fp16": 5e-2}
FID_TOLERANCE = 1e-2
GRAPH_MEAN_TOLERANCE = 0.05
CYCLEGAN_TFLOP_PER_ITER_256 = 1.9
"""The physical work of one CycleGAN iteration at 256 px, ResNet-9, batch 1 (forward and backward of all four nets)."""
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
"""Dense bf16 tensor-core peaks by GPU family (vendor figures, no sparsity)."""
TARGETS_MS = {"one run, bf16 + graphs": 20.0, "4 runs packed, aggregate": 11.0}
FID_TARGET_S = 15.0


class OutOfTime(BaseException):
    """The check's time budget ran out during a part (not an ``Exception``: a training run must not take it for its own failure)."""


def variant(size: int, blocks: int, precision: str = "fp32", method: str = "cyclegan", **train: Any) -> dict[str, Any]:
    spec = {
        "data": {"name": "synthetic", "size": size, "n_train": 8, "n_test": 4},
        "generator": {"name": "resnet", "n_blocks": blocks, "ngf": 8 if size <= 64 else 64},
        "discriminator": {"name": "patchgan", "ndf": 8 if size <= 64 else 64},
        "train": {"precision": precision, "num_workers": 0, **train},
        "samples": 0,
        "eval": {"metrics": []},
    }
    if method != "cyclegan":  # CUT's layers up to the last block the generator has (paper: block5)
        spec["method"] = {"name": method, "nce_layers": ["input", "down1", "down2", *dict.fromkeys(["block1", f"block{min(blocks, 5)}"])]}
    return spec


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def term_difference(got: float, expected: float) -> float:
    """Relative for terms of 0.2 and more, absolute / 0.2 below (a near-zero term has no meaningful ratio)."""
    return relative(got, expected) if abs(expected) > 0.2 else abs(got - expected) / 0.2


@contextlib.contextmanager
def tf32(allowed: bool):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def one_step(spec: dict[str, Any], device: torch.device, networks: dict[str, Any], batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """One eager step of ``spec`` on ``device`` from the weights ``networks``, with the rest of the state its own (a GradScaler
    saved from an fp32 method, which has none, cannot load into an fp16 one)."""
    resolved = resolve_variant(spec, default_registry())
    method = build_method(resolved, device, batch[0].shape[-1])
    method.load_state_dict({"networks": copy.deepcopy(networks), "parts": method.state_dict()["parts"]})
    runtime = runtime_of(resolved, device)
    terms = method.train_step(*(runtime.to_device(images) for images in batch), TrainingProgress(0, 1, 1, 1))
    return {name: float(value.detach()) for name, value in terms.items()}


def step_check(device: torch.device, size: int, blocks: int) -> list[dict[str, Any]]:
    """The ten loss terms of one step on ``device`` against the CPU's, from the same weights and batch."""
    seed_everything(0)
    cpu = torch.device("cpu")
    networks = build_method(resolve_variant(variant(size, blocks), default_registry()), cpu, size).state_dict()["networks"]
    generator = torch.Generator().manual_seed(0)
    batch = (torch.rand(1, 3, size, size, generator=generator) * 2 - 1, torch.rand(1, 3, size, size, generator=generator) * 2 - 1)
    with tf32(False):
        expected = one_step(variant(size, blocks), cpu, networks, batch)
    rows = [{"check": "step on the CPU (expected)", "measured": 0.0, "tolerance": 0.0, "passed": True, "terms": expected}]
    for name, precision, allow_tf32 in [
        ("fp32 (TF32 off)", "fp32", False),
        ("fp32 (PyTorch's defaults)", "fp32", True),
        ("bf16", "bf16", True),
        ("fp16", "fp16", True),
    ]:
        if precision == "fp16" and device.type == "cpu":
            continue  # fp16 autocast with grad scaling is a GPU path
        with tf32(allow_tf32 if device.type == "cuda" else False):
            got = one_step(variant(size, blocks, precision), device, networks, batch)
        worst = max(term_difference(got[k], expected[k]) for k in expected)
        finite = all(math.isfinite(v) for v in got.values())
        rows.append(
            {"check": f"step {name}", "measured": worst, "tolerance": TOLERANCES[name], "passed": finite and worst <= TOLERANCES[name], "terms": got}
        )
    return rows


def steps_of(spec: dict[str, Any], device: torch.device, size: int, steps: int, graphs: str) -> tuple[list[dict[str, float]], bool, bool]:
    """``steps`` steps of ``spec`` from seed 0 on fixed batches, as the loop runs them: each step's losses, whether the
    step was captured, and whether the final weights are finite."""
    resolved = resolve_variant(spec, default_registry())
    seed_everything(0)
    method, runtime = build_method(resolved, device, size), runtime_of(resolved, device)
    runner = StepRunner.for_run(method, runtime, graphs)  # type: ignore[arg-type]
    batches = torch.Generator().manual_seed(1)
    rows = []
    for step in range(steps):
        real_A, real_B = (torch.rand(1, 3, size, size, generator=batches) * 2 - 1 for _ in range(2))
        terms = runner(real_A, real_B, TrainingProgress(0, step + 1, steps, 1))
        rows.append({name: float(value.detach()) for name, value in terms.items()})
    finite = all(
        bool(torch.isfinite(w).all()) for network in method.networks.values() for w in network.state_dict().values() if w.is_floating_point()
    )
    return rows, runner.captured, finite


def graphs_check(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """Each built-in method, 50 steps captured against 50 eager ones: mean losses within 5 %, weights finite."""
    size, blocks, steps = (32, 1, 8) if quick else (128, 9, 50)
    rows = []
    with gpu_algorithms(deterministic=False):
        for method in ("cyclegan", "cut", "fastcut"):
            spec = variant(size, blocks, method=method)
            eager, _, _ = steps_of(spec, device, size, steps, "off")
            captured, was_captured, finite = steps_of(spec, device, size, steps, "on" if device.type == "cuda" else "off")
            worst = max(term_difference(statistics.fmean(r[k] for r in captured), statistics.fmean(r[k] for r in eager)) for k in eager[0])
            passed = finite and worst <= GRAPH_MEAN_TOLERANCE and was_captured == (device.type == "cuda")
            rows.append({"check": f"graphs vs eager, {method}", "measured": worst, "tolerance": GRAPH_MEAN_TOLERANCE, "passed": passed})
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
    generators = {d: torch.load(RunFolder(folder).generator_path(d), weights_only=True)["state_dict"] for d in ("AtoB", "BtoA")}
    return {"generators": generators, "losses": result.final_losses, "cuda_graphs": result.cuda_graphs}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["losses"] == b["losses"] and all(
        torch.equal(a["generators"][d][k], b["generators"][d][k]) for d in a["generators"] for k in a["generators"][d]
    )


def resume_check(device: torch.device, folder: Path) -> list[dict[str, Any]]:
    """Resumed == uninterrupted, and uninterrupted == uninterrupted: with the defaults, with train.deterministic, and with
    CUDA graphs under train.deterministic (stopped after the capture, so the resumed run captures anew)."""
    modes = {"defaults": ({"cuda_graphs": "off"}, 3), "deterministic": ({"deterministic": True, "cuda_graphs": "off"}, 3)}
    if device.type == "cuda":
        modes["graphs, deterministic"] = ({"deterministic": True, "cuda_graphs": "on"}, 6)
    rows, runs = [], {}
    for mode, (train, stop_at) in modes.items():
        spec = variant(32, 1, device=str(device), epochs=2, decay_epochs=0, log_every=1, **train)  # log_every: the step hook every step
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs[mode] = whole = trained(spec, folder / mode / "whole")
            again, resumed = trained(spec, folder / mode / "again"), trained(spec, folder / mode / "resumed", stop_at=stop_at)
        nondeterministic = sorted(
            {str(w.message).split(" does not have a deterministic")[0] for w in caught if "does not have a deterministic" in str(w.message)}
        )
        promised = device.type == "cpu" or train.get("deterministic", False)  # the defaults on a GPU: equal in distribution only
        rows.append(
            {
                "check": f"rerun identical ({mode})",
                "measured": float(not same(whole, again)),
                "tolerance": 0.0,
                "passed": same(whole, again) or not promised,
            }
        )
        passed = (same(whole, resumed) or not promised) and whole["cuda_graphs"] == (train["cuda_graphs"] == "on")
        rows.append(
            {
                "check": f"resume bit-exact ({mode})",
                "measured": float(not same(whole, resumed)),
                "tolerance": 0.0,
                "passed": passed,
                "nondeterministic_ops": nondeterministic,
            }
        )
        for row in rows[-2:]:
            row["informative"] = not promised
    if "graphs, deterministic" in runs:  # whether capture changes the numbers at all (capturable Adam, same kernels): for information
        equal = same(runs["deterministic"], runs["graphs, deterministic"])
        rows.append(
            {
                "check": "graphs == eager bit for bit (deterministic)",
                "measured": float(not equal),
                "tolerance": 0.0,
                "passed": True,
                "informative": True,
            }
        )
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
    with gpu_algorithms(deterministic=False):
        scores = Scorer(resolved.eval, device).score(moved, data, resolved.data.as_dict())
    return scores.values, time.perf_counter() - started


def translators_of(size: int, blocks: int) -> dict[str, torch.nn.Module]:
    seed_everything(0)
    method = build_method(resolve_variant(variant(size, blocks), default_registry()), torch.device("cpu"), size)
    return {d: method.networks[method.translator(d)].eval() for d in ("AtoB", "BtoA")}


def fid_check(device: torch.device, folder: Path, quick: bool) -> list[dict[str, Any]]:
    size, blocks = (32, 1) if quick else (128, 9)
    translators = translators_of(size, blocks)
    on_cpu, _ = scores_on(torch.device("cpu"), size, 16, translators, folder)
    on_device, _ = scores_on(device, size, 16, translators, folder)
    rows = []
    for column in ("fid_a2b", "fid_b2a", "kid_a2b", "kid_b2a"):
        measured = relative(on_device[column], on_cpu[column])
        rows.append(
            {"check": f"{column} on the device vs the CPU", "measured": measured, "tolerance": FID_TOLERANCE, "passed": measured <= FID_TOLERANCE}
        )
    return rows


def unpaired_command() -> str:
    beside = Path(sys.executable).with_name("unpaired")
    return str(beside) if beside.is_file() else shutil.which("unpaired") or "unpaired"


def jobs_check(folder: Path, deadline: float) -> list[dict[str, Any]]:
    """A 2-variant study with ``--jobs 2``: it finishes, and says where each run trained."""
    study = {
        "name": "gpu-jobs",
        "base": variant(32, 1, epochs=1, decay_epochs=0),
        "grid": {"generator.n_blocks": [1, 2]},
        "seeds": [0],
        "tracking": {"enabled": False},
    }
    (folder / "jobs.yaml").write_text(yaml.safe_dump(study))
    command = [unpaired_command(), "run", str(folder / "jobs.yaml"), "--jobs", "2", "--quiet", "--out", str(folder / "jobs")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
    devices = sorted({json.loads(p.read_text()).get("device", "") for p in (folder / "jobs").glob("*/*/result.json")})
    passed = done.returncode == 0 and len(list((folder / "jobs").glob("*/*/result.json"))) == 2
    return [{"check": "study with --jobs 2", "measured": float(done.returncode), "tolerance": 0.0, "passed": passed, "devices": devices}]


def bench_train(device: torch.device, folder: Path, quick: bool, reference: Path, deadline: float) -> dict[str, Any]:
    """bench_train's rotated rounds against the reference: fp32 and bf16 + channels_last, eager and captured."""
    if quick:
        size, settings, timing = 32, ["fp32"], ["--blocks", "1", "--iters", "1", "--warmup", "1", "--rounds", "1"]
    else:
        size, settings = 256, ["fp32", "fp32+graphs", "bf16+cl", "bf16+cl+graphs"]
        timing = ["--blocks", "9", "--iters", "20", "--warmup", "3", "--rounds", "3"]
    if device.type != "cuda":  # graphs are a CUDA path
        settings = [s for s in settings if "graphs" not in s]
    return timed_settings(device, size, settings, timing, reference, folder / "bench.json", deadline)


def bench_compiled(device: torch.device, folder: Path, reference: Path, deadline: float) -> dict[str, Any]:
    """bench_train for bf16 + channels_last captured, the same with the networks compiled inside the captured step
    (Inductor's fused kernels; the compilation happens in the warm-up steps and is not timed), and bf16 captured without
    channels_last (PyTorch's instance norm returns a channels-last input contiguous, seen on a CPU with torch 2.14: whether
    the layout still pays under graphs)."""
    settings = ["bf16+graphs", "bf16+cl+graphs", "bf16+cl+compile+graphs"]
    timing = ["--blocks", "9", "--iters", "20", "--warmup", "3", "--rounds", "2"]
    return timed_settings(device, 256, settings, timing, reference, folder / "compiled.json", deadline)


def timed_settings(
    device: torch.device, size: int, settings: list[str], timing: list[str], reference: Path, out: Path, deadline: float
) -> dict[str, Any]:
    """bench_train.py's figures for ``settings`` (CycleGAN), with the share of the device's bf16 peak at 256 px."""
    command = [sys.executable, str(HERE / "bench_train.py"), "--size", str(size), *timing, "--settings", *settings, "--methods", "cyclegan"]
    command += ["--device", str(device), "--reference", str(reference), "--json", str(out)]
    subprocess.run(command, check=True, env=_clean_env(), timeout=max(1.0, deadline - time.monotonic()))
    bench = json.loads(out.read_text())
    peak = next((tflops for family, tflops in BF16_PEAK_TFLOPS.items() if family in bench["device"]), None)
    for row in bench["engine"]:
        achieved = CYCLEGAN_TFLOP_PER_ITER_256 / row["s_per_iter"] if size == 256 else None
        row["tflops"] = achieved
        row["fraction_of_bf16_peak"] = achieved / peak if achieved and peak else None
    return bench


def profile(device: torch.device, folder: Path, quick: bool, deadline: float) -> dict[str, Any]:
    """profile_step.py for bf16 + channels_last, eager and captured: the kernels a step runs, by kind, and how busy they
    keep the device (where the captured step's time goes is what is left to cut)."""
    size, blocks, steps, settings = (32, 1, 2, ["fp32"]) if quick else (256, 9, 10, ["bf16+cl", "bf16+cl+graphs"])
    found = {}
    for setting in settings:
        out = folder / f"profile-{setting}.json"
        command = [sys.executable, str(HERE / "profile_step.py"), "--size", str(size), "--blocks", str(blocks), "--steps", str(steps)]
        command += ["--setting", setting, "--device", str(device), "--json", str(out)]
        subprocess.run(command, check=True, env=_clean_env(), timeout=max(1.0, deadline - time.monotonic()))
        found[setting] = json.loads(out.read_text())
    return found


def bench_study(device: torch.device, folder: Path, quick: bool, deadline: float) -> dict[str, Any]:
    """bench_study: 4 runs one at a time, then packed 4 to the device, as processes taking turns and through CUDA MPS
    (packed 2, 3 and 4 gave 0.75 - 1.02x one at a time on the H200 without MPS)."""
    size, steps, jobs = (32, 8, ["2"]) if quick else (256, 160, ["4"])
    if device.type == "cuda":
        jobs.append("--mps")
    command = [sys.executable, str(HERE / "bench_study.py"), "--device", device.type, "--size", str(size), "--steps", str(steps), "--jobs", *jobs]
    command += ["--precision", "fp32" if quick else "bf16", "--json", str(folder / "study.json")]
    try:
        subprocess.run(command, check=True, env=_clean_env(), timeout=max(1.0, deadline - time.monotonic() - 5))
    except subprocess.TimeoutExpired:  # what was measured before the time ran out is kept
        pass
    return json.loads((folder / "study.json").read_text()) if (folder / "study.json").is_file() else {"error": "no packing measured in time"}


def fid_time(device: torch.device, folder: Path, quick: bool) -> dict[str, Any]:
    size, n_test = (32, 4) if quick else (256, 130)
    _, seconds = scores_on(device, size, n_test, translators_of(size, 1 if quick else 9), folder / "timing")
    return {"images": 2 * n_test, "size": size, "seconds": seconds}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "UNPAIRED_CACHE"}


@contextlib.contextmanager
def time_limit(seconds: float, part: str) -> Iterator[None]:
    """Raise :class:`OutOfTime` naming ``part`` if the block runs past ``seconds``."""

    def expire(signum: int, frame: Any) -> None:
        raise OutOfTime(f"the check's time budget ran out during part {part!r}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_parts(parts: dict[str, Callable[[float], Any]], report: dict[str, Any], budget: float, out: Path) -> None:
    """Run the parts in order, each within what is left of ``budget``: a check part's rows go to ``report["checks"]``,
    a measurement's figures to ``report["measurements"]``; a part that fails or runs out of time is a failed row."""
    deadline = time.monotonic() + budget
    for part, run in parts.items():
        started, left = time.perf_counter(), deadline - time.monotonic()
        if left <= 1:
            report["skipped"].append(part)
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {part} ({left:.0f} s left)", flush=True)
        try:
            with time_limit(left, part):
                found = run(deadline)
        except (Exception, OutOfTime) as error:  # a broken path (or the budget spent) is a finding, not the end of the check
            message = f"{type(error).__name__}: {error}"
            found = [{"check": part, "measured": math.nan, "tolerance": 0.0, "passed": False, "error": message}]
            print(f"  {part} failed: {message}", flush=True)
        if isinstance(found, list):
            for row in found:
                row["seconds"] = time.perf_counter() - started
            report["checks"] += found
        else:
            report["measurements"][part] = found
        out.write_text(json.dumps(report, indent=1, default=str))  # what was found so far


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['device']}, torch {report['torch']}, CUDA {report['cuda']}")
    print(f"{'check':<46}{'measured':>12}{'tolerance':>12}  result")
    for row in report["checks"]:
        extra = row.get("error") or ", ".join(row.get("nondeterministic_ops", []) or row.get("devices", []))
        result = "info" if row.get("informative") else "ok" if row["passed"] else "FAILED"
        print(f"{row['check']:<46}{row['measured']:>12.3g}{row['tolerance']:>12.3g}  {result} {extra}".rstrip())
    measured = report["measurements"]
    engine_rows = [row for part in ("bench_train", "compiled") for row in measured.get(part, {}).get("engine", [])]
    for row in engine_rows:
        fraction = f", {row['fraction_of_bf16_peak']:.1%} of bf16 peak" if row.get("fraction_of_bf16_peak") else ""
        speed = f"{row['s_per_iter'] * 1000:7.1f} ms/iter, {row['speedup']:.2f}x the reference"
        print(f"{row['setting']:<22} {speed}, peak {row['peak_mib'] or 0:.0f} MiB{fraction}")
    study = measured.get("bench_study", {})
    for line in packing_lines(study):
        print(line)
    if "fid_time" in measured and "seconds" in measured["fid_time"]:
        fid = measured["fid_time"]
        print(f"FID + KID of {fid['images']} test images at {fid['size']} px: {fid['seconds']:.1f} s (target {FID_TARGET_S:.0f} s)")
    for setting, found in measured.get("profile", {}).items():
        if isinstance(found, dict) and "wall_ms_per_step" in found:
            print(profile_line(setting, found))
    engine = {row["setting"]: row["s_per_iter"] * 1000 for row in engine_rows}  # compiled's own bf16+cl+graphs row: the same setting
    captured = [ms for setting, ms in engine.items() if setting.startswith("bf16") and setting.endswith("+graphs")]
    packed = max((study.get(key, {}).get("aggregate_it_per_s") or 0 for key in ("jobs_4", "mps_jobs_4")), default=0)
    reached = {"one run, bf16 + graphs": min(captured, default=None), "4 runs packed, aggregate": 1000 / packed if packed else None}
    for target, limit in TARGETS_MS.items():
        got = reached[target]
        print(
            f"target {target}: {limit:.0f} ms per iteration; " + (f"{got:.1f} ms, {'met' if got <= limit else 'missed'}" if got else "not measured")
        )
    if report["skipped"]:
        print(f"not run, the time budget spent: {', '.join(report['skipped'])}")


def packing_lines(study: dict[str, Any]) -> list[str]:
    """bench_study's figures: one at a time, then each way of packing the runs (processes taking turns, MPS)."""
    lines = []
    if "serial" in study:
        lines.append(f"{study['runs']} runs one at a time: {1000 / study['serial']['aggregate_it_per_s']:.1f} ms per iteration")
    for key in sorted(k for k in study if "jobs_" in k):
        row, way = study[key], f"--jobs {key.rsplit('_', 1)[1]} packed" + (" through MPS" if key.startswith("mps_") else "")
        if "error" in row:
            lines.append(f"{way}: not measured ({row['error']})")
        else:
            together = f"{1000 / row['aggregate_it_per_s']:.1f} ms per iteration together"
            lines.append(f"{way}: {together}, {row['aggregate_speedup']:.2f}x one at a time")
    return lines


def profile_line(setting: str, found: dict[str, Any]) -> str:
    """One line of a profile: the step's time, its kernels, how busy they keep the device, the three largest kinds."""
    busy = f", device busy {found['device_busy']:.0%}" if found.get("device_busy") is not None else ""
    kinds = ", ".join(f"{kind} {ms:.1f}" for kind, ms in list(found["by_kind_ms_per_step"].items())[:3])
    return (
        f"profile {setting}: {found['wall_ms_per_step']:.1f} ms per step, {found['entries_per_step']:.0f} {found['entries']} "
        f"taking {found['busy_ms_per_step']:.1f} ms{busy} ({kinds} ms)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device under test (cpu: the harness against itself)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short measurements: to check the script itself")
    parts_named = ["step", "graphs", "resume", "bench_train", "bench_study", "fid_time", "fid", "jobs", "profile", "compiled"]
    parser.add_argument("--skip", nargs="*", default=[], choices=parts_named, help="parts left out")
    parser.add_argument("--budget", type=float, default=360.0, help="seconds for the whole check (the parts run in turn)")
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--reference", type=Path, default=HERE.parents[1] / "shared" / "bench" / "reference_cyclegan.py")
    args = parser.parse_args()
    device = pick_device(args.device)
    report: dict[str, Any] = {"device": describe_device(device), "torch": torch.__version__, "cuda": torch.version.cuda, "checks": []}
    report |= {"measurements": {}, "skipped": []}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        parts: dict[str, Callable[[float], Any]] = {
            "step": lambda deadline: step_check(device, 32 if args.quick else 128, 1 if args.quick else 9),
            "graphs": lambda deadline: graphs_check(device, args.quick),
            "resume": lambda deadline: resume_check(device, folder / "resume"),
            "bench_train": lambda deadline: bench_train(device, folder, args.quick, args.reference, deadline),
            "bench_study": lambda deadline: bench_study(device, folder, args.quick, deadline),
            "fid_time": lambda deadline: fid_time(device, folder, args.quick),
            "fid": lambda deadline: fid_check(device, folder / "fid", args.quick),
            "jobs": lambda deadline: jobs_check(folder, deadline),
            "profile": lambda deadline: profile(device, folder, args.quick, deadline),
            "compiled": lambda deadline: bench_compiled(device, folder, args.reference, deadline),
        }
        if device.type != "cuda":  # a compiled step captured: a CUDA path (compiling alone takes minutes on a CPU)
            del parts["compiled"]
        run_parts({k: v for k, v in parts.items() if k not in args.skip}, report, args.budget, args.json)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print_report(report)
    return 0 if all(row["passed"] for row in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
