"""Executors on this machine: one run after another in this process, or several at once in worker processes."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from time import monotonic
from typing import Any, cast

import torch

from unpaired import ENTRY_POINT_GROUP, PROJECT_NAME
from unpaired.devices import DeviceError, pick_device
from unpaired.errors import StopRequested
from unpaired.execution.jobs import count_line, train_job
from unpaired.plugin_api.executors import Collect, ExecutorContext, RunJob
from unpaired.results.time_left import runs_left_note
from unpaired.signals import deferred_signals, listen_for_stop, request_stop, stop_requested
from unpaired.storage.lifecycle import RunOutcome, outcome_of_exception


class LocalExecutor:
    """Runs on this machine: one after another in this process, or ``jobs`` at a time in worker processes."""

    machines = 1

    def __init__(self, jobs: int, context: ExecutorContext):
        self.jobs, self.context = jobs, context

    def run(self, jobs: list[RunJob], collect: Collect) -> None:
        """Train ``jobs`` here; a device this machine lacks, or CUDA graphs asked for where it has no GPU, stops the study
        before any run starts (each would fail)."""
        for device, graphs in dict.fromkeys((job.spec["train"]["device"], job.spec["train"]["cuda_graphs"]) for job in jobs):
            if pick_device(device).type != "cuda" and graphs == "on":
                raise DeviceError(
                    "train.cuda_graphs is on, but no CUDA GPU is visible to train on; use train.cuda_graphs: auto to train without graphs here"
                )
        if self.jobs <= 1:
            self.run_serially(jobs, collect)
        else:
            self.run_in_processes(jobs, collect)

    def close(self) -> None:
        pass

    def run_serially(self, jobs: list[RunJob], collect: Collect) -> None:
        """Train the jobs one after another in this process; stop at the first one interrupted by a signal. Each run's
        first line says how long the runs left would take at the pace of those trained to the end so far."""
        took: list[float] = []
        for number, job in enumerate(jobs, 1):
            self.context.announce(f"[{number}/{len(jobs)}] {job.label} -> {job.folder}{runs_left_note(len(jobs) - number + 1, took)}")
            started = monotonic()
            outcome = self.context.train_here(job)
            took += [monotonic() - started] if outcome.outcome == "trained" else []
            collect(job, outcome)
            if outcome.outcome == "interrupted":
                break

    def run_in_processes(self, jobs: list[RunJob], collect: Collect) -> None:
        """Train ``self.jobs`` runs at a time, each in a worker process of its own (:func:`worker_context`): on the visible GPUs in turn
        (several on each when there are more jobs than GPUs), with the CPU cores divided between the workers. A worker
        that dies (killed by the system when memory runs out, say) fails its own run only: the others go on.

        A stop signal to this process (or to its whole process group) stops the workers' runs at their
        next step, with a checkpoint; queued runs are not started; every worker has ended when this returns. So does
        this process's end, even by SIGKILL: each worker holds one end of a pipe (``lifeline``) whose other end only
        this process holds, and stops when that closes.
        """
        gpus = torch.cuda.device_count()
        threads = threads_per_run(self.jobs)
        queue = [_on_gpu(job, number % gpus) if gpus else job for number, job in enumerate(jobs)]
        context = worker_context()
        stop = context.Value("i", 0, lock=False)  # one writer, whole ints: no lock, so no semaphore left behind by a kill -9
        lifeline, held_here = context.Pipe(duplex=False)
        running: dict[Connection, _Worker] = {}
        ended: dict[str, int] = {}
        self.context.announce(f"training {len(jobs)} run(s), {self.jobs} at a time")
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    worker = _Worker.start(context, queue.pop(0), threads, stop, lifeline, self.context.show_progress)
                    running[worker.outcomes] = worker
                for ready in wait(list(running)):  # an outcome sent, or a worker gone without one
                    worker = running[cast(Connection, ready)]
                    outcome = worker.outcome()
                    del running[worker.outcomes]  # only now: a stop while it was read still collects it
                    collect(worker.job, outcome)
                    ended[outcome.outcome] = ended.get(outcome.outcome, 0) + 1
                    if self.context.show_progress:  # the queued runs start at once: count them as running
                        now = min(self.jobs, len(running) + len(queue))
                        self.context.announce(count_line(len(jobs), len(queue) + len(running), now, ended))
        except StopRequested as signal_received:
            self.context.announce(f"signal {signal_received.signum}: the running runs checkpoint and stop; the queued ones are not started")
            with deferred_signals():  # a second Ctrl-C must not abandon the workers mid-checkpoint
                stop.value = signal_received.signum
                for worker in running.values():
                    collect(worker.job, worker.outcome(stopping=True))
            raise
        finally:
            held_here.close()
            lifeline.close()


@dataclass(frozen=True)
class _Worker:
    """A process training one job, and the end of the pipe its outcome comes through."""

    job: RunJob
    process: BaseProcess
    outcomes: Connection

    @classmethod
    def start(cls, context: Any, job: RunJob, threads: int, stop: Any, lifeline: Connection, show_progress: bool) -> _Worker:
        receiving, sending = context.Pipe(duplex=False)
        arguments = (job, threads, stop, lifeline, show_progress, sending, dict(os.environ))
        process = context.Process(target=_work, args=arguments, name=f"unpaired {job.label}")
        process.start()
        sending.close()  # the worker's copy is the only one left: the pipe ends when the worker does
        return cls(job, process, receiving)

    def outcome(self, stopping: bool = False) -> RunOutcome:
        """How the run ended, once its worker has: the outcome it sent, or, when it died without one, a failure naming
        how (the run resumes from its last checkpoint next time); ``not-started`` when that was while ``stopping`` (a
        Ctrl-C reaches a worker still starting, before it listens for the study's stop)."""
        try:
            outcome: RunOutcome | None = self.outcomes.recv()
        except EOFError:
            outcome = None
        self.process.join()
        self.outcomes.close()
        if outcome is not None:
            return outcome
        if stopping:
            return RunOutcome("not-started")
        code = self.process.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with status {code}"
        if code == -signal.SIGKILL:
            how += " (as the system does to the largest process when memory runs out)"
        return outcome_of_exception(self.job.run_id, RuntimeError(f"the worker process training it {how}; the other runs went on"))


WORKER_PRELOAD = ["unpaired.execution.jobs", "unpaired.tracking.tracker", "mlflow"]
"""What the fork server imports once, with the built-in plugins, so that a worker forked from it starts with them loaded
(about 3 s of CPU a worker otherwise). None of them touches a GPU when imported; third-party plugins are left to each
worker."""


def worker_context() -> Any:
    """How worker processes start: forked from a fork server holding :data:`WORKER_PRELOAD` where the platform has
    one (Linux, macOS), else spawned (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    built_in = [point.module for point in entry_points(group=ENTRY_POINT_GROUP) if point.dist and point.dist.name == PROJECT_NAME]
    context.set_forkserver_preload([*WORKER_PRELOAD, *built_in])
    return context


def _work(job: RunJob, threads: int, stop: Any, lifeline: Connection, show_progress: bool, outcomes: Connection, environment: dict[str, str]) -> None:
    """A worker's life: with the study's ``environment`` as it was when the run was started (a fork server started by
    an earlier study has that study's, and multiprocessing passes on only the working folder and the import path), train
    ``job`` with ``threads`` CPU threads, stopping when ``stop`` holds a signal or ``lifeline`` closes (the study's
    process ended), and send back its outcome. Its progress, when shown, is a line per epoch (see
    :mod:`unpaired.training.progress`)."""
    os.environ.clear()
    os.environ.update(environment)
    torch.set_num_threads(threads)
    listen_for_stop(stop)
    threading.Thread(target=_stop_when_closed, args=(lifeline, job.label), name="lifeline", daemon=True).start()
    try:
        outcome = train_job(job, show_progress=show_progress)
    except Exception as error:  # the worker itself could not start the run
        outcome = outcome_of_exception(job.run_id, error)
    with contextlib.suppress(OSError):  # the study's process is gone: nobody to tell, and the run folder says it all
        outcomes.send(outcome)
    outcomes.close()


def _stop_when_closed(lifeline: Connection, label: str) -> None:
    """Wait until the study's process closes its end of ``lifeline`` (it ends, even killed outright, or leaves
    :meth:`LocalExecutor.run_in_processes` on an error), then stop this worker's run as SIGTERM would, with a checkpoint
    at its next step, rather than train on unseen, holding the run's lease and its GPU."""
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv_bytes()  # nothing is ever sent: this returns only when the pipe ends
    if stop_requested() is None:
        print(f"{label}: the study's process ended: checkpointing and stopping", file=sys.stderr, flush=True)
        request_stop(signal.SIGTERM)


def _on_gpu(job: RunJob, gpu: int) -> RunJob:
    """The job on GPU ``gpu`` when its spec leaves the device to the machine (``auto``)."""
    train = job.spec["train"]
    return job if train["device"] != "auto" else dataclasses.replace(job, spec={**job.spec, "train": {**train, "device": f"cuda:{gpu}"}})


def threads_per_run(jobs: int) -> int:
    """The CPU threads torch uses in each of ``jobs`` runs trained at once on this machine: the cores divided between the
    worker processes, or torch's own default for one run in this process. A CPU run's numbers depend on it."""
    return torch.get_num_threads() if jobs <= 1 else max(1, (os.cpu_count() or 1) // jobs)
