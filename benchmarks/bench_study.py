#!/usr/bin/env python3
"""Aggregate study throughput: the same 4 runs one at a time (``unpaired run --jobs 1``) and packed (``--jobs N`` for
each N asked), and with ``--executor ray`` on a two-node Ray cluster started on this machine (1 CPU per node).

    python benchmarks/bench_study.py --jobs 2 --json study.json                    # 32 px, tiny networks, on the CPU
    python benchmarks/bench_study.py --device cuda --size 256 --jobs 2 3 4         # paper-sized runs sharing one GPU
    python benchmarks/bench_study.py --executor ray                                # also Ray, vs --jobs 2
    python benchmarks/bench_study.py --device cuda --size 256 --jobs 4 --mps       # also packed through CUDA MPS

Each way reports its wall time (process starts, warm-up and CUDA graph captures included) and its steady aggregate
iterations per second: the runs' last-epoch iterations per second, summed over the runs that train at once. Small runs
are where packing pays most: a single one keeps neither every core nor a GPU busy. At ``--size 256`` the runs are the
paper's (ResNet-9, PatchGAN, batch 1) with ``--precision`` and channels_last. Tracking and FID are off: only training
is timed.

Processes that share a GPU take turns on it, so once each run's step is captured and keeps the GPU busy, packing gains
nothing. With ``--mps`` each ``--jobs N`` is timed again with the runs as clients of a CUDA MPS server, whose kernels
from different processes run side by side: a control daemon of this benchmark's own (its pipe and log folders in its
temporary folder, nothing system-wide), stopped at the end; the device's settings are left as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RUNS = 4
UNPAIRED = str(Path(sys.executable).with_name("unpaired")) if Path(sys.executable).with_name("unpaired").is_file() else shutil.which("unpaired")


def study(size: int, device: str, precision: str, steps: int) -> dict:
    """The 4 runs: one variant, 4 seeds; tiny networks at 32 px, the paper's above; 2 epochs of ``steps / 2`` steps."""
    tiny = size <= 64
    return {
        "name": "bench-jobs",
        "base": {
            "data": {"name": "synthetic", "size": size, "n_train": steps // 2, "n_test": 2},
            "generator": {"name": "resnet", "n_blocks": 2, "ngf": 8} if tiny else {"name": "resnet"},
            "discriminator": {"name": "patchgan", "n_layers": 2, "ndf": 8} if tiny else {"name": "patchgan"},
            "train": {
                "epochs": 2,
                "decay_epochs": 0,
                "num_workers": 0 if tiny else 2,
                "log_every": 1000,
                "checkpoint_every": 2,
                "device": device,
                "precision": precision,
                "channels_last": not tiny,
            },
            "samples": 0,
            "eval": {"metrics": []},
        },
        "seeds": list(range(RUNS)),
        "tracking": {"enabled": False},
    }


def timed_run(spec: Path, out: Path, *options: str, timeout: float | None = None) -> dict:
    """Run the study; its wall seconds and steady aggregate it/s (``--jobs`` runs at once, or one at a time)."""
    started = time.perf_counter()
    command = [UNPAIRED or "unpaired", "run", str(spec), "--out", str(out), "--quiet", *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    wall = time.perf_counter() - started
    rates = [json.loads(p.read_text())[-1]["it_per_s"] for p in out.glob("*/*/history.json")]
    if len(rates) != RUNS:
        raise RuntimeError(f"{len(rates)} of {RUNS} runs left a history in {out}")
    at_once = min(RUNS, int(options[options.index("--jobs") + 1])) if "--jobs" in options else RUNS
    return {"wall_s": wall, "aggregate_it_per_s": statistics.fmean(rates) * at_once, "run_it_per_s": rates}


@contextlib.contextmanager
def local_ray_cluster(folder: Path, nodes: int = 2):
    """``nodes`` Ray nodes of 1 CPU each on this machine, in their own process groups; yields the address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    ray, started = str(Path(sys.executable).with_name("ray")), []
    try:
        for index in range(nodes):
            role = (
                ["--head", "--port", str(port), "--temp-dir", str(folder / "ray"), "--include-dashboard", "false"]
                if index == 0
                else ["--address", f"127.0.0.1:{port}"]
            )
            log = folder / f"ray-node-{index}.log"
            started.append(
                subprocess.Popen(
                    [ray, "start", *role, "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", "--block"],
                    stdout=open(log, "w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                )
            )
            while "Ray runtime started" not in log.read_text():
                if started[-1].poll() is not None:
                    raise RuntimeError(log.read_text()[-2000:])
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for node in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)


@contextlib.contextmanager
def mps_server(folder: Path):
    """A CUDA MPS control daemon with its pipe and log folders under ``folder``; the processes started inside inherit
    ``CUDA_MPS_PIPE_DIRECTORY`` and share the GPU through it. Asked to quit at the end."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        raise RuntimeError("nvidia-cuda-mps-control is not on PATH: MPS cannot be measured on this machine")
    folders = {"CUDA_MPS_PIPE_DIRECTORY": folder / "mps-pipe", "CUDA_MPS_LOG_DIRECTORY": folder / "mps-log"}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    saved = {name: os.environ.get(name) for name in folders}
    os.environ.update({name: str(path) for name, path in folders.items()})
    try:
        subprocess.run([control, "-d"], check=True, timeout=30)
        yield
    finally:
        subprocess.run([control], input="quit\n", text=True, capture_output=True, timeout=30, check=False)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def packed_row(spec: Path, out: Path, jobs: int, serial: dict, timeout: float | None) -> dict:
    """``--jobs N`` timed, with its speedups over one at a time."""
    packed = timed_run(spec, out, "--jobs", str(jobs), timeout=timeout)
    return packed | {"speedup": serial["wall_s"] / packed["wall_s"], "aggregate_speedup": packed["aggregate_it_per_s"] / serial["aggregate_it_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[2], help="runs at once, each compared with one at a time")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (every run on the first GPU)")
    parser.add_argument("--size", type=int, default=32, help="image side: 32 times tiny networks, 256 the paper's")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=80, help="training steps per run (2 epochs)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local", help="ray: also time the study on a local Ray cluster")
    parser.add_argument("--timeout", type=float, default=None, help="seconds each way may take")
    parser.add_argument("--mps", action="store_true", help="also time each --jobs N with the runs as clients of a CUDA MPS server")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.mps and args.device != "cuda":
        parser.error("--mps shares a GPU: it needs --device cuda")
    device = "cuda:0" if args.device == "cuda" else args.device
    report: dict = {"runs": RUNS, "size": args.size, "device": device, "precision": args.precision, "steps_per_run": args.steps}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        spec = folder / "study.yaml"
        spec.write_text(yaml.safe_dump(study(args.size, device, args.precision, args.steps)))
        report["serial"] = serial = timed_run(spec, folder / "serial", "--jobs", "1", timeout=args.timeout)
        print(f"{RUNS} runs of {args.steps} steps at {args.size} px on {device}, one at a time: {serial['wall_s']:.1f} s, "
              f"{serial['aggregate_it_per_s']:.1f} it/s")  # fmt: skip
        ways = [(f"jobs_{jobs}", jobs, False) for jobs in args.jobs] + [(f"mps_jobs_{jobs}", jobs, True) for jobs in args.jobs if args.mps]
        for key, jobs, mps in ways:
            try:
                with mps_server(folder) if mps else contextlib.nullcontext():
                    report[key] = packed = packed_row(spec, folder / key, jobs, serial, args.timeout)
            except (RuntimeError, subprocess.SubprocessError) as error:  # MPS is the machine's to allow: a finding, not the end
                if not mps:
                    raise
                report[key] = {"error": f"{type(error).__name__}: {str(error)[-500:]}"}
                print(f"--jobs {jobs} through MPS: not measured ({report[key]['error']})")
                continue
            print(
                f"--jobs {jobs}{' through MPS' if mps else ''}: {packed['wall_s']:.1f} s ({packed['speedup']:.2f}x), steady "
                f"{packed['aggregate_it_per_s']:.1f} it/s ({1000 / packed['aggregate_it_per_s']:.1f} ms per iteration, "
                f"{packed['aggregate_speedup']:.2f}x one at a time)"
            )
            if args.json:
                args.json.write_text(json.dumps(report, indent=1))  # what is measured so far
        if args.executor == "ray":
            jobs = args.jobs[0]
            with local_ray_cluster(folder, nodes=jobs) as address:
                on_ray = timed_run(spec, folder / "ray", "--executor", "ray", "--address", address, timeout=args.timeout)
            overhead = (on_ray["wall_s"] - report[f"jobs_{jobs}"]["wall_s"]) / (RUNS / jobs)
            report |= {
                "ray_s": on_ray["wall_s"],
                "ray_vs_jobs": report[f"jobs_{jobs}"]["wall_s"] / on_ray["wall_s"],
                "ray_overhead_s_per_run": overhead,
            }
            throughput = f"throughput {report['ray_vs_jobs']:.2f}x --jobs {jobs}'s"
            print(f"Ray, {jobs} nodes of 1 CPU: {on_ray['wall_s']:.1f} s, {throughput}, {overhead:+.1f} s per run")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
