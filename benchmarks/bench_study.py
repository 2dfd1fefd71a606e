#!/usr/bin/env python3
"""Aggregate study throughput: the same small study with ``unpaired run --jobs 1`` and ``--jobs N``.

    python benchmarks/bench_study.py --jobs 2 --json study.json

Small variants (32 px, tiny networks) are where running several at once pays off most: a single
one cannot keep every core (or a GPU) busy. Tracking and FID are off so only training is timed.
"""

from __future__ import annotations

import argparse
import json
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
        "eval": {"fid": False},
    },
    "grid": {"generator.n_blocks": [1, 2]},
    "seeds": [0, 1],
    "tracking": {"enabled": False},
}


def timed_run(study: Path, out: Path, jobs: int) -> float:
    unpaired = str(Path(sys.executable).with_name("unpaired"))
    started = time.perf_counter()
    subprocess.run([unpaired, "run", str(study), "--out", str(out), "--jobs", str(jobs), "--quiet"], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        study = Path(folder) / "study.yaml"
        study.write_text(yaml.safe_dump(STUDY))
        serial = timed_run(study, Path(folder) / "serial", 1)
        parallel = timed_run(study, Path(folder) / "parallel", args.jobs)
    runs = len(STUDY["grid"]["generator.n_blocks"]) * len(STUDY["seeds"])
    report = {"runs": runs, "jobs": args.jobs, "serial_s": serial, "parallel_s": parallel, "speedup": serial / parallel}
    print(f"{runs} runs: --jobs 1 {serial:.1f} s, --jobs {args.jobs} {parallel:.1f} s, aggregate speed-up {serial / parallel:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
