#!/usr/bin/env python3
"""Aggregate study throughput: the same small study with ``unpaired run --jobs 1`` and ``--jobs N``, and
with ``--executor ray`` on a two-node Ray cluster started on this machine (1 CPU per node).

    python benchmarks/bench_study.py --jobs 2 --json study.json
    python benchmarks/bench_study.py --executor ray                  # also Ray, vs --jobs 2

Small variants (32 px, tiny networks) are where running several at once pays off most: a single
one cannot keep every core (or a GPU) busy. Tracking and FID are off so only training is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STUDY = {
    "name": "bench-jobs",
    "base": {
        "data": {"name": "synthetic", "size": 32, "n_train": 40, "n_test": 2},
        "generator": {"name": "resnet", "n_blocks": 2, "ngf": 8},
        "discriminator": {"name": "patchgan", "n_layers": 2, "ndf": 8},
        "train": {"epochs": 2, "decay_epochs": 1, "num_workers": 0, "log_every": 1000},
        "samples": 0,
        "eval": {"metrics": []},
    },
    "grid": {"generator.n_blocks": [1, 2]},
    "seeds": [0, 1],
    "tracking": {"enabled": False},
}


def timed_run(study: Path, out: Path, *options: str) -> float:
    unpaired = str(Path(sys.executable).with_name("unpaired"))
    started = time.perf_counter()
    subprocess.run([unpaired, "run", str(study), "--out", str(out), "--quiet", *options], check=True, capture_output=True)
    return time.perf_counter() - started


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--executor", choices=["local", "ray"], default="local", help="ray: also time the study on a local Ray cluster")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = len(STUDY["grid"]["generator.n_blocks"]) * len(STUDY["seeds"])
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        study = folder / "study.yaml"
        study.write_text(yaml.safe_dump(STUDY))
        serial = timed_run(study, folder / "serial", "--jobs", "1")
        parallel = timed_run(study, folder / "parallel", "--jobs", str(args.jobs))
        report = {"runs": runs, "jobs": args.jobs, "serial_s": serial, "parallel_s": parallel, "speedup": serial / parallel}
        print(f"{runs} runs: --jobs 1 {serial:.1f} s, --jobs {args.jobs} {parallel:.1f} s, aggregate speed-up {serial / parallel:.2f}x")
        if args.executor == "ray":
            with local_ray_cluster(folder, nodes=args.jobs) as address:
                on_ray = timed_run(study, folder / "ray", "--executor", "ray", "--address", address)
            overhead = (on_ray - parallel) / (runs / args.jobs)
            report |= {"ray_s": on_ray, "ray_vs_jobs": parallel / on_ray, "ray_overhead_s_per_run": overhead}
            print(
                f"Ray, {args.jobs} nodes of 1 CPU: {on_ray:.1f} s, throughput {parallel / on_ray:.2f}x --jobs {args.jobs}'s, "
                f"{overhead:+.1f} s per run"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
