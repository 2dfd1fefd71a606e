"""Executors on this machine: one run after another in this process, or several at once in worker processes."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unpaired.config.resolved import resolve_variant
from unpaired.config.study import PlannedRun
from unpaired.errors import StopRequested, print_notices_plainly
from unpaired.plugin_api.registry import Registry, default_registry
from unpaired.results.lease import LeaseHeld
from unpaired.results.records import RunResult
from unpaired.results.run_folder import RunFolder
from unpaired.results.study_folder import run_folder
from unpaired.training.run import train_run
from unpaired.training.runtime import deferred_signals, listen_for_stop, stop_requested

if TYPE_CHECKING:
    from unpaired.execution.runner import StudySummary


class LocalExecutor:
    """Runs on this machine: one after another in this process, or ``jobs`` at a time in worker processes."""

    machines = 1

    def __init__(self, jobs: int, registry: Registry, listeners: list[object]):
        self.jobs, self.registry, self.listeners = jobs, registry, listeners

    def run(self, todo: list[PlannedRun], out: Path, summary: StudySummary, announce: Callable[[str], None], show_progress: bool) -> None:
        if self.jobs <= 1:
            run_serially(todo, out, self.registry, summary, announce, show_progress)
        else:
            run_in_processes(todo, out, self.jobs, self.listeners, summary, announce)

    def close(self) -> None:
        pass


def run_serially(todo: list[PlannedRun], out: Path, registry: Registry, summary: StudySummary,
                 announce: Callable[[str], None], show_progress: bool) -> None:
    """Train the runs one after another in this process; stop at the first one interrupted by a signal."""
    for number, run in enumerate(todo, 1):
        folder = run_folder(out, run)
        announce(f"[{number}/{len(todo)}] {run.variant} seed {run.seed} -> {folder}")
        try:
            result = train_run(run.resolved, folder, registry, run.variant, show_progress=show_progress)
        except LeaseHeld as busy:
            announce(f"busy: {busy}")
            summary.record(run, busy)
            continue
        summary.record(run, result)
        if result.status == "interrupted":
            break


def run_in_processes(todo: list[PlannedRun], out: Path, jobs: int, listeners: list[object], summary: StudySummary,
                     announce: Callable[[str], None]) -> None:
    """Train ``jobs`` runs at a time in spawned worker processes, each with the study's listeners: on the
    visible GPUs in turn, or on the CPU with its cores divided between the workers.

    A stop signal to this process (or to its whole process group) stops the workers' runs at their
    next step, with a checkpoint; queued runs are cancelled; every worker has ended when this returns.
    """
    gpus = torch.cuda.device_count()
    threads = 1 if gpus else max(1, (os.cpu_count() or 1) // jobs)
    specs = []
    for number, run in enumerate(todo):
        resolved = run.resolved.as_dict()
        if gpus and resolved["train"]["device"] == "auto":
            resolved["train"]["device"] = f"cuda:{number % gpus}"
        specs.append(resolved)
    context = multiprocessing.get_context("spawn")
    stop = context.Value("i", 0)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_start_worker, initargs=(threads, stop)) as pool:
        futures = [pool.submit(_train_in_worker, spec, str(run_folder(out, run)), run.variant, listeners) for spec, run in zip(specs, todo)]
        announce(f"training {len(todo)} run(s), {jobs} at a time")
        collected = 0
        try:
            for run, future in zip(todo, futures):
                _collect(run, future, summary, announce)
                collected += 1
        except StopRequested as signal_received:
            announce(f"signal {signal_received.signum}: the running runs checkpoint and stop; the queued ones are not started")
            with deferred_signals():  # a second Ctrl-C must not abandon the workers mid-checkpoint
                stop.value = signal_received.signum
                pool.shutdown(wait=True, cancel_futures=True)
                for run, future in list(zip(todo, futures))[collected:]:
                    if not future.cancelled():
                        _collect(run, future, summary, announce)
            raise


def _collect(run: PlannedRun, future: Future, summary: StudySummary, announce: Callable[[str], None]) -> None:
    try:
        result: RunResult | LeaseHeld | None = future.result()
    except LeaseHeld as busy:
        result = busy
    except Exception as error:  # the worker itself died or could not start the run
        result = RunResult.from_exception(run.run_id, error)
    if result is None:  # queued when the study was stopped: not started, still pending
        return
    summary.record(run, result)
    announce(f"{'busy' if isinstance(result, LeaseHeld) else result.status}: {run.variant} seed {run.seed}")


def _start_worker(threads: int, stop: Any) -> None:
    print_notices_plainly()
    torch.set_num_threads(threads)
    listen_for_stop(stop)


def _train_in_worker(spec: dict[str, Any], folder: str, variant: str, listeners: list[object]) -> RunResult | None:
    if stop_requested() is not None:  # handed over before the study stopped: do not start it
        return None
    registry = default_registry()
    with registry.listening(*listeners):
        return train_run(resolve_variant(spec, registry), RunFolder(Path(folder)), registry, variant, show_progress=False)
