"""Executors on this machine: one run after another in this process, or several at once in worker processes."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import torch

from unpaired.errors import StopRequested
from unpaired.execution.jobs import train_job
from unpaired.plugin_api.executors import Collect, ExecutorContext, RunJob
from unpaired.signals import deferred_signals, listen_for_stop
from unpaired.storage.lifecycle import RunOutcome, outcome_of_exception


class LocalExecutor:
    """Runs on this machine: one after another in this process, or ``jobs`` at a time in worker processes."""

    machines = 1

    def __init__(self, jobs: int, context: ExecutorContext):
        self.jobs, self.context = jobs, context

    def run(self, jobs: list[RunJob], collect: Collect) -> None:
        if self.jobs <= 1:
            self.run_serially(jobs, collect)
        else:
            self.run_in_processes(jobs, collect)

    def close(self) -> None:
        pass

    def run_serially(self, jobs: list[RunJob], collect: Collect) -> None:
        """Train the jobs one after another in this process; stop at the first one interrupted by a signal."""
        for number, job in enumerate(jobs, 1):
            self.context.announce(f"[{number}/{len(jobs)}] {job.label} -> {job.folder}")
            outcome = self.context.train_here(job)
            collect(job, outcome)
            if outcome.outcome == "interrupted":
                break

    def run_in_processes(self, jobs: list[RunJob], collect: Collect) -> None:
        """Train ``self.jobs`` runs at a time in spawned worker processes: on the visible GPUs in turn (several on each
        when there are more jobs than GPUs), with the CPU cores divided between the workers.

        A stop signal to this process (or to its whole process group) stops the workers' runs at their
        next step, with a checkpoint; queued runs are cancelled; every worker has ended when this returns.
        """
        gpus = torch.cuda.device_count()
        threads = threads_per_run(self.jobs)
        jobs = [_on_gpu(job, number % gpus) if gpus else job for number, job in enumerate(jobs)]
        context = multiprocessing.get_context("spawn")
        stop = context.Value("i", 0)
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=context, initializer=_start_worker, initargs=(threads, stop)) as pool:
            futures = [pool.submit(train_job, job) for job in jobs]
            self.context.announce(f"training {len(jobs)} run(s), {self.jobs} at a time")
            collected = 0
            try:
                for job, future in zip(jobs, futures):
                    _collect(job, future, collect)
                    collected += 1
            except StopRequested as signal_received:
                self.context.announce(f"signal {signal_received.signum}: the running runs checkpoint and stop; the queued ones are not started")
                with deferred_signals():  # a second Ctrl-C must not abandon the workers mid-checkpoint
                    stop.value = signal_received.signum
                    pool.shutdown(wait=True, cancel_futures=True)
                    for job, future in list(zip(jobs, futures))[collected:]:
                        if not future.cancelled():
                            _collect(job, future, collect)
                raise


def _on_gpu(job: RunJob, gpu: int) -> RunJob:
    """The job on GPU ``gpu`` when its spec leaves the device to the machine (``auto``)."""
    train = job.spec["train"]
    return job if train["device"] != "auto" else dataclasses.replace(job, spec={**job.spec, "train": {**train, "device": f"cuda:{gpu}"}})


def _collect(job: RunJob, future: Future, collect: Collect) -> None:
    try:
        outcome: RunOutcome = future.result()
    except Exception as error:  # the worker itself died or could not start the run
        outcome = outcome_of_exception(job.run_id, error)
    collect(job, outcome)


def threads_per_run(jobs: int) -> int:
    """The CPU threads torch uses in each of ``jobs`` runs trained at once on this machine: the cores divided between the
    worker processes, or torch's own default for one run in this process. A CPU run's numbers depend on it."""
    return torch.get_num_threads() if jobs <= 1 else max(1, (os.cpu_count() or 1) // jobs)


def _start_worker(threads: int, stop: Any) -> None:
    torch.set_num_threads(threads)
    listen_for_stop(stop)
