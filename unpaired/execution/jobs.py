"""What every executor shares: the contract an executor implements, the job it hands a worker, and training
that job in the worker. An executor itself is only how to start workers and collect what they send back.

The study (``execution/runner.py``) plans which runs to train and makes one :class:`RunJob` of each; the
executor trains them, anywhere, calling ``collect`` with the :class:`RunOutcome` of each; the study records it.
In a worker, :func:`train_job` trains one job: the study's listeners follow it there, the driver's lease
timeout applies, and a stop signal makes it checkpoint and stop (the outcome is ``interrupted``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from unpaired.config.resolved import resolve_variant
from unpaired.config.study import PlannedRun
from unpaired.errors import print_notices_plainly
from unpaired.plugin_api.registry import Registry, default_registry
from unpaired.signals import stop_requested
from unpaired.storage.lease import TIMEOUT_ENV, lease_timeout
from unpaired.storage.lifecycle import RunOutcome
from unpaired.storage.run_folder import RunFolder
from unpaired.training.run import train_run


@dataclass(frozen=True)
class RunJob:
    """One planned run as a worker receives it: self-contained and picklable (a worker loads nothing else)."""

    run_id: str
    variant: str
    seed: int
    spec: dict[str, Any]
    """The resolved variant (``ResolvedVariant.as_dict``): a worker resolves it again against its own plugins."""
    folder: Path
    listeners: tuple[object, ...] = ()
    """The study's listeners (a tracker): registered in the worker while it trains the run."""
    lease_timeout: float = 0.0
    """The driver's lease timeout ($UNPAIRED_LEASE_TIMEOUT), which every worker uses whatever its environment says."""

    @property
    def label(self) -> str:
        """How people are told which run it is: ``variant seed 0``."""
        return f"{self.variant} seed {self.seed}"


Collect = Callable[[RunJob, RunOutcome], None]
"""What an executor calls once for each job it handed a worker, with its outcome (``not-started`` for one the
worker did not start because a stop came first: the study leaves it pending)."""


@dataclass(frozen=True)
class ExecutorContext:
    """What the study gives an executor's factory besides its settings."""

    out: Path
    """The study's output folder, where every run folder lives: workers must see it."""
    registry: Registry
    """The study's registry: its plugins, with the study's listeners registered while it runs."""
    announce: Callable[[str], None]
    """Tells the user one line (on stderr)."""
    show_progress: bool
    """Whether the user wants progress bars."""


class Executor(Protocol):
    """Trains a study's jobs somewhere: this process, worker processes, a cluster. Built by an ``executor``
    component's factory, ``factory(params, context: ExecutorContext) -> Executor``."""

    machines: int
    """How many machines the runs may land on (1 but on a cluster): listeners are told it."""

    def run(self, jobs: list[RunJob], collect: Collect) -> None:
        """Train every job (each through :func:`train_job` in some worker), calling ``collect`` with each outcome as it
        arrives. On a stop signal (:func:`unpaired.signals.stop_requested`, or :class:`StopRequested` raised while
        waiting), ask the running jobs to stop (they checkpoint), start no other, collect the running ones, and raise
        :class:`unpaired.errors.StopRequested`. A worker that dies is collected as ``RunOutcome.of_exception``."""

    def close(self) -> None:
        """Release what the executor holds (a cluster connection); called once, however the study ended."""


def make_jobs(runs: list[PlannedRun], folder_of: Callable[[PlannedRun], Path], listeners: list[object]) -> list[RunJob]:
    """One job per planned run, in order, with its folder and the study's listeners."""
    return [RunJob(run.run_id, run.variant, run.seed, run.resolved.as_dict(), folder_of(run), tuple(listeners), lease_timeout()) for run in runs]


def train_job(
    job: RunJob,
    registry: Registry | None = None,
    threads: int | None = None,
    show_progress: bool = False,
    lease_wait: float = 0.0,
    ray_node: str | None = None,
) -> RunOutcome:
    """Train one job here and return its outcome; ``not-started`` when a stop was asked for before it began.

    In a worker (``registry`` None) the installed plugins load once per process and the job's listeners follow the
    run, torch uses ``threads`` CPU threads, and framework notices print as one plain line each. The study's own
    process passes its registry, whose listeners are already registered. ``lease_wait``: seconds to wait for another
    holder's lease (a retry of a dead attempt); ``ray_node``: recorded in the result.
    """
    if stop_requested() is not None:
        return RunOutcome("not-started")
    if job.lease_timeout:
        os.environ[TIMEOUT_ENV] = str(job.lease_timeout)
    if threads is not None:
        torch.set_num_threads(threads)
    if registry is not None:
        return _train(job, registry, show_progress, lease_wait, ray_node)
    print_notices_plainly()
    registry = default_registry()
    with registry.listening(*job.listeners):
        return _train(job, registry, show_progress, lease_wait, ray_node)


def _train(job: RunJob, registry: Registry, show_progress: bool, lease_wait: float, ray_node: str | None) -> RunOutcome:
    return train_run(
        resolve_variant(job.spec, registry),
        RunFolder(Path(job.folder)),
        registry,
        job.variant,
        show_progress=show_progress,
        lease_wait=lease_wait,
        ray_node=ray_node,
    )
