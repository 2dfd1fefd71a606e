#!/usr/bin/env python3
"""Where a training step's time goes: the kernels one step runs on the device, and how busy they keep it.

Profiles ``--steps`` steps of one method at one setting (named as ``bench_train.py`` names them: ``bf16+cl+graphs``,
...), after the warm-up steps (and the capture, for a ``+graphs`` setting), with ``torch.profiler``. It reports, per
step:

- the wall time, timed over the same number of steps without the profiler;
- the kernels the device ran and their summed time, hence the share of the wall time the device was busy (on a
  host-bound eager step far below 1; a captured step near 1 leaves only the kernels' own work to cut);
- that time by kind of kernel (convolutions and matrix products, normalisation, padding, element-wise, reductions,
  the optimiser, copies and layout changes) and the kernels that take the most.

On a CPU there are no kernels: the same tables list the operators by their own CPU time, and the busy share is left out.

    python benchmarks/profile_step.py --size 256 --setting bf16+cl+graphs --json profile.json
    python benchmarks/profile_step.py --size 32 --blocks 1 --setting fp32 --device cpu    # the script itself
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench_train import EngineTimer
from unpaired.devices import gpu_algorithms, pick_device
from unpaired.training.graphs import WARMUP_STEPS

KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("optimiser", ("adam", "multi_tensor", "foreach")),
    ("normalisation", ("norm", "welford", "bn_fw", "bn_bw", "batchnorm")),
    ("padding", ("reflection", "pad")),
    (
        "convolution / matmul",
        ("conv", "gemm", "xmma", "cutlass", "wgrad", "dgrad", "fprop", "implicit", "nvjet", "winograd", "aten::mm", "addmm", "bmm"),
    ),
    ("copy / layout", ("copy", "memcpy", "memset", "nchw", "nhwc", "cat", "transpose", "fill", "clone")),
    ("reduction", ("reduce", "triton_red", "triton_per", "sum", "mean")),
    ("element-wise", ("elementwise", "triton_poi", "pointwise", "tanh", "relu", "mul", "add", "sub", "div", "sqrt", "lerp")),
)
"""Kinds of kernel by words in their names, the first match winning (cuDNN, cuBLAS, ATen and Inductor's kernels, and
ATen's operators on a CPU)."""


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, words in KINDS if any(word in lowered for word in words)), "other")


def profile_step(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The step's wall time, kernels (or CPU operators), busy share, time by kind and top entries, per step."""
    timer = EngineTimer(args, args.method, args.setting, device)  # built as bench_train times it: warmed up, and captured
    wall = timer.run(args.steps)
    on_device = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_device else [])]) as profiler:
        timer.run(args.steps)
    events = [
        (event.name, event.time_range.elapsed_us() if on_device else event.self_cpu_time_total)
        for event in profiler.events()
        if (event.device_type == DeviceType.CUDA if on_device else event.name.startswith("aten::"))
    ]
    return summary(events, wall, args.steps, on_device) | {
        "device": torch.cuda.get_device_name(device) if on_device else "cpu",
        "torch": torch.__version__,
        "method": args.method,
        "setting": args.setting,
        "size": args.size,
        "blocks": args.blocks,
        "batch": args.batch,
        "captured": timer.step.captured,
    }


def summary(events: list[tuple[str, float]], wall_s: float, steps: int, on_device: bool) -> dict[str, Any]:
    """Per-step figures from ``(name, microseconds)`` events collected over ``steps`` steps."""
    per_name: dict[str, list[float]] = collections.defaultdict(list)
    for name, microseconds in events:
        per_name[name].append(microseconds)
    busy_ms = sum(microseconds for _, microseconds in events) / 1000 / steps
    by_kind: collections.Counter[str] = collections.Counter()
    for name, times in per_name.items():
        by_kind[kind_of(name)] += sum(times) / 1000 / steps
    top = sorted(per_name.items(), key=lambda item: -sum(item[1]))[:15]
    return {
        "wall_ms_per_step": wall_s * 1000,
        "entries_per_step": len(events) / steps,
        "entries": "kernels" if on_device else "CPU operators (self time)",
        "busy_ms_per_step": busy_ms,
        "device_busy": busy_ms / (wall_s * 1000) if on_device else None,
        "by_kind_ms_per_step": dict(by_kind.most_common()),
        "top": [
            {
                "name": name,
                "calls_per_step": len(times) / steps,
                "ms_per_step": sum(times) / 1000 / steps,
                "share": sum(times) / 1000 / busy_ms / steps,
            }
            for name, times in top
        ],
    }


def print_profile(found: dict[str, Any]) -> None:
    captured = "captured as a CUDA graph" if found["captured"] else "eager"
    what = f"{found['method']} {found['setting']} ({captured}), {found['size']} px, ResNet-{found['blocks']}"
    print(f"{found['device']}, torch {found['torch']}: {what}")
    busy = f", the device busy {found['device_busy']:.0%} of it" if found["device_busy"] is not None else ""
    print(
        f"{found['wall_ms_per_step']:.1f} ms per step; {found['entries_per_step']:.0f} {found['entries']} per step "
        f"taking {found['busy_ms_per_step']:.1f} ms{busy}"
    )
    if found["captured"] and found["entries_per_step"] == 0:
        print("the profiler saw no kernel inside the replayed graph: profile the eager setting for the kernels")
    for kind, ms in found["by_kind_ms_per_step"].items():
        print(f"  {kind:<22}{ms:8.2f} ms  {ms / max(found['busy_ms_per_step'], 1e-9):5.0%}")
    for row in found["top"]:
        print(f"  {row['ms_per_step']:8.3f} ms {row['calls_per_step']:6.0f}x  {row['name'][:100]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="bf16+cl+graphs", help="fp32, bf16 or fp16, with +cl, +compile, +graphs (as bench_train)")
    parser.add_argument("--method", default="cyclegan")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--disc", default="patchgan", choices=["patchgan", "pooled"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="steps timed, then the same number profiled")
    parser.add_argument("--warmup", type=int, default=WARMUP_STEPS + 1, help="untimed steps first (with +graphs, at least the capture's)")
    parser.set_defaults(with_data=False)  # in-memory batches, as bench_train without --with-data
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    with gpu_algorithms(deterministic=False):
        found = profile_step(args, pick_device(args.device))
    print_profile(found)
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
