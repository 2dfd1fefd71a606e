#!/usr/bin/env python3
"""Training-step speed of the engine against the reference CycleGAN step, measured in one invocation.

Times each method's ``train_step`` (the code path ``unpaired run`` uses; CycleGAN, CUT and FastCUT by default) for
each chosen setting, and
``../shared/bench/reference_cyclegan.py`` (a plain eager fp32 step with the official per-step
work) in alternating rounds, on random batches of the same shape (or, with ``--with-data``, the engine
on images read from files by the training loader). Warm-up steps are excluded.

    python benchmarks/bench_train.py --quick                      # 128 px, ResNet-9: fp32 (+ bf16 where native), 2 rounds
    python benchmarks/bench_train.py --size 256 --settings fp32 bf16+cl+compile --iters 20 --json out.json
    python benchmarks/bench_train.py --with-data --size 256       # engine steps fed by the training loader from files
    python benchmarks/bench_train.py --loader --size 256          # also: data decode + augment rate on its own

A setting is ``fp32``, ``bf16`` or ``fp16``, optionally with ``+cl`` (channels_last), ``+compile`` and ``+graphs`` (the
step captured as a CUDA graph and replayed, as ``train.cuda_graphs: on``; without it, the step runs eagerly). cuDNN
autotunes, as in training. ``speedup`` is reference s/iter divided by the engine's (above 1 is faster), the
median over rounds of each round's ratio, with its range; ``time_vs_cyclegan`` is a method's s/iter over CycleGAN's
at the same setting, the median of the rounds' ratios (the CUT paper: about 0.6 for CUT on a GPU).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unpaired.config.resolved import resolve_variant
from unpaired.config.spec import TrainConfig
from unpaired.plugin_api import UnpairedData
from unpaired.plugin_api.components import TrainingProgress
from unpaired.plugin_api.registry import default_registry
from unpaired.tools.export import export_folder_layout
from unpaired.training.batches import EpochOrder, TrainPairs
from unpaired.training.parts import build_method, runtime_of
from unpaired.devices import gpu_algorithms, pick_device
from unpaired.training.graphs import WARMUP_STEPS, StepRunner
from unpaired.training.runtime import seed_everything

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "bench" / "reference_cyclegan.py"


def method_for(args: argparse.Namespace, method: str) -> dict:
    """The method at its paper's settings; CUT's PatchNCE layers end at the last block the generator has (paper: block5)."""
    if method == "cyclegan":
        return {"name": method}
    return {"name": method, "nce_layers": ["input", "down1", "down2", *dict.fromkeys(["block1", f"block{min(args.blocks, 5)}"])]}


def variant_for(args: argparse.Namespace, setting: str, method: str = "cyclegan") -> dict:
    precision, *flags = setting.split("+")
    return {
        "method": method_for(args, method),
        "data": {"name": "synthetic", "size": args.size, "n_train": 8, "n_test": 2},
        "generator": {"name": "resnet", "n_blocks": args.blocks},
        "discriminator": {"name": args.disc},
        "train": {
            "precision": precision,
            "channels_last": "cl" in flags,
            "compile": "compile" in flags,
            "cuda_graphs": "on" if "graphs" in flags else "off",
            "batch_size": args.batch,
        },
        "eval": {"metrics": []},
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EngineTimer:
    """The engine for one setting, built and warmed up once, timed over several rounds. With
    ``args.with_data`` every step's images come from the folder dataset through the training
    loader (files decoded, resized, cropped and flipped by its workers) as in ``unpaired run``."""

    def __init__(self, args: argparse.Namespace, method: str, setting: str, device: torch.device):
        registry = default_registry()
        seed_everything(0)
        self.method, self.setting, self.device = method, setting, device
        self.name = f"{method} {setting}"
        variant = resolve_variant(variant_for(args, setting, method), registry)
        self.model, self.runtime = build_method(variant, device, args.size), runtime_of(variant, device)
        self.step = StepRunner.for_run(self.model, self.runtime, variant.train.cuda_graphs)  # as the training loop runs it
        self.progress = TrainingProgress(epoch=0, step=1, steps_per_epoch=1, total_epochs=1)
        if args.with_data:
            self.folder = tempfile.TemporaryDirectory()  # removed with the timer
            data = folder_dataset(args, Path(self.folder.name), cache=False)
            workers = TrainConfig().num_workers
            loader = torch.utils.data.DataLoader(
                TrainPairs(data),
                batch_size=args.batch,
                sampler=EpochOrder(data.train_length, 0, 0),
                num_workers=workers,
                pin_memory=device.type == "cuda",
                persistent_workers=workers > 0,
            )
            self.batches = (batch for _ in itertools.count() for batch in loader)
        else:
            shape = (args.batch, 3, args.size, args.size)
            self.batches = itertools.cycle([tuple(self.runtime.to_device(torch.rand(shape) * 2 - 1) for _ in range(2)) for _ in range(4)])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.run(max(args.warmup, WARMUP_STEPS + 1) if self.step.capture else args.warmup)  # a captured step: warmed up and captured

    def run(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            real_A, real_B = next(self.batches)
            self.terms = self.step(real_A, real_B, self.progress)
        synchronize(self.device)
        return (time.perf_counter() - started) / max(steps, 1)

    def peak_mib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None


def time_reference(args: argparse.Namespace, device: torch.device) -> dict:
    command = [
        sys.executable,
        str(args.reference),
        "--size",
        str(args.size),
        "--blocks",
        str(args.blocks),
        "--batch",
        str(args.batch),
        "--iters",
        str(args.iters),
        "--warmup",
        str(args.warmup),
        "--device",
        str(device),
    ]
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


def folder_dataset(args: argparse.Namespace, folder: Path, cache: bool) -> UnpairedData:
    """64 synthetic pairs written as image files at the load size (286/256 x size, as the paper's
    286 -> 256), read back by the ``folder`` dataset with a random crop to ``size`` and flips."""
    registry = default_registry()
    load = round(args.size * 286 / 256)
    if not (folder / "trainA").is_dir():
        export_folder_layout(registry.build("dataset", {"name": "synthetic", "size": load, "n_train": 64, "n_test": 2}), folder)
    return registry.build("dataset", {"name": "folder", "root": str(folder), "load_size": load, "crop_size": args.size, "cache": cache})


def loader_rate(args: argparse.Namespace) -> dict:
    """Decode + augment rate of the folder dataset with the default loader workers, reading the
    files each time and from the in-memory cache."""
    workers = TrainConfig().num_workers
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        for cache in (False, True):
            data = folder_dataset(args, Path(folder), cache)
            loader = torch.utils.data.DataLoader(TrainPairs(data), batch_size=1, sampler=EpochOrder(data.train_length, 0, 0), num_workers=workers)
            started = time.perf_counter()
            count = sum(1 for _ in loader)
            rates["cached" if cache else "from_files"] = count / (time.perf_counter() - started)
    return {"pairs_per_s": rates, "workers": workers, "size": args.size}


def matmul_gflops(device: torch.device, dtype: torch.dtype) -> float:
    """Square-matmul throughput: whether this device's bf16/fp16 units can beat fp32 at all. Small on a CPU: without
    native bf16 a 1536 x 1536 bf16 product ran at 0.4 GFLOP/s (18 s each), and native or emulated differ 100-fold."""
    n, reps = (8192, 10) if device.type == "cuda" else (512, 3)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e9


def native_settings(device: torch.device, gflops: dict[str, float]) -> list[str]:
    """fp32, and bf16 where the device runs it natively: on GPUs, or on a CPU whose bf16 matmuls beat its fp32 ones
    (without native bf16, e.g. no AVX512-BF16/AMX, bf16 is emulated and many times slower: not worth timing)."""
    return ["fp32", "bf16"] if device.type == "cuda" or gflops["bf16"] > gflops["fp32"] else ["fp32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="128 px, ResNet-9, batch 1, 2 rounds of 3 timed steps: fp32, and bf16 where the device runs it natively"
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--disc", default="patchgan", choices=["patchgan", "pooled"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--settings", nargs="+", default=["fp32", "bf16", "bf16+cl"])
    parser.add_argument("--methods", nargs="+", default=["cyclegan", "cut", "fastcut"], help="methods timed in the same rounds")
    parser.add_argument("--iters", type=int, default=8, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (reference, each setting); medians are reported")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--with-data", action="store_true", help="time the engine's steps with images from files through the training loader")
    parser.add_argument("--loader", action="store_true", help="also measure the data loader's pairs/s on its own")
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with gpu_algorithms(deterministic=False):
        measure(args, pick_device(args.device))


def measure(args: argparse.Namespace, device: torch.device) -> None:
    gflops = {name: matmul_gflops(device, dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    if args.quick:
        args.size, args.blocks, args.batch, args.iters, args.rounds, args.warmup = 128, 9, 1, 3, 2, 1
        args.settings = native_settings(device, gflops)

    # Rounds alternate the reference and every setting, in an order rotated each round, so that a
    # shared machine's drifting load touches all of them alike; a speedup is the median of per-round ratios.
    timers = {(method, setting): EngineTimer(args, method, setting, device) for method in args.methods for setting in args.settings}
    timers = {timer.name: timer for timer in timers.values()}
    order = ["reference", *timers]
    rounds, reference_peak = [], None
    for index in range(args.rounds):
        times = {}
        for name in order[index % len(order) :] + order[: index % len(order)]:
            if name == "reference":
                reference_run = time_reference(args, device)
                times[name], reference_peak = reference_run["s_per_iter"], reference_run.get("peak_mib")
            else:
                times[name] = timers[name].run(args.iters)
        rounds.append(times)
    reference = statistics.median(r["reference"] for r in rounds)
    rows = []
    for timer in timers.values():
        speedups = [r["reference"] / r[timer.name] for r in rounds]
        cyclegan = f"cyclegan {timer.setting}"
        rows.append(
            {
                "method": timer.method,
                "setting": timer.setting,
                "s_per_iter": statistics.median(r[timer.name] for r in rounds),
                "time_vs_cyclegan": statistics.median(r[timer.name] / r[cyclegan] for r in rounds) if cyclegan in timers else None,
                "speedup": statistics.median(speedups),
                "speedup_range": [min(speedups), max(speedups)],
                "peak_mib": timer.peak_mib(),
                "losses": [round(v.item(), 4) for v in timer.terms.values()],
            }
        )
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "size": args.size,
        "blocks": args.blocks,
        "disc": args.disc,
        "batch": args.batch,
        "iters": args.iters,
        "rounds": rounds,
        "engine_with_data": args.with_data,
        "reference_s_per_iter": reference,
        "reference_peak_mib": reference_peak,
        "engine": rows,
        "matmul_gflops": gflops,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.loader:
        report["loader"] = loader_rate(args)

    print(
        f"{report['device']}, torch {report['torch']}, {args.size} px, ResNet-{args.blocks}, {args.disc}, batch {args.batch}, "
        f"{args.rounds} rounds x {args.iters} steps, engine {'with data from files' if args.with_data else 'on in-memory batches'}"
    )
    print(f"{'method':<10}{'setting':<18}{'s/iter':>10}{'it/s':>8}{'speedup':>9}{'(range)':>14}{'peak MiB':>10}{'x CycleGAN time':>17}")
    print(f"{'reference':<28}{reference:>10.4f}{1 / reference:>8.2f}{1.0:>9.2f}{'':>14}{reference_peak or float('nan'):>10.0f}")
    for row in rows:
        low, high = row["speedup_range"]
        print(
            f"{row['method']:<10}{row['setting']:<18}{row['s_per_iter']:>10.4f}{1 / row['s_per_iter']:>8.2f}{row['speedup']:>9.2f}"
            f"{f'({low:.2f}-{high:.2f})':>14}{row['peak_mib'] or float('nan'):>10.0f}{row['time_vs_cyclegan'] or float('nan'):>17.2f}"
        )
    print(f"matmul GFLOP/s: fp32 {gflops['fp32']:.0f}, bf16 {gflops['bf16']:.0f} (bf16 can only pay off where it is clearly higher)")
    if args.loader:
        rates = report["loader"]["pairs_per_s"]
        print(
            f"loader, {report['loader']['workers']} workers, {args.size} px: {rates['from_files']:.1f} pairs/s from files, "
            f"{rates['cached']:.1f} pairs/s cached (training steps: {1 / min(r['s_per_iter'] for r in rows):.2f}/s)"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
