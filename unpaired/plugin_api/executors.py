"""The executor contract: what an ``executor`` component gets (:class:`ExecutorContext`), the job it hands a worker
(:class:`RunJob`), and what it must do with each (:class:`Executor`). An executor is only how to start workers and
collect what they send back: training a job is the framework's (``context.train_here``, or a worker process started
with ``context.workers``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from unpaired.plugin_api.lifecycle import RunOutcome


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


class Workers(Protocol):
    """Training a job in a process of its own, started anywhere that sees the study's output folder."""

    def command(self, job: RunJob, job_file: Path) -> list[str]:
        """Write ``job`` to ``job_file`` and return the command that trains it there (put a launcher before it:
        ``srun``, ``ssh HOST``). The process exits 0 whatever became of the run; SIGINT or SIGTERM make it checkpoint
        and stop."""
        ...

    def outcome(self, job: RunJob, job_file: Path, exit_status: int | None) -> RunOutcome:
        """The outcome the process left beside ``job_file`` (a failure naming ``exit_status`` when it left none); both
        files are removed."""
        ...


@dataclass(frozen=True)
class ExecutorContext:
    """What the study gives an executor's factory besides its settings."""

    out: Path
    """The study's output folder, where every run folder lives: workers must see it."""
    announce: Callable[[str], None]
    """Tells the user one line (on stderr)."""
    show_progress: bool
    """Whether the user wants progress bars."""
    train_here: Callable[[RunJob], RunOutcome]
    """Trains one job in this process, with the study's plugins and listeners, and returns its outcome."""
    workers: Workers
    """Trains one job in a process of its own (see :class:`Workers`)."""


class Executor(Protocol):
    """Trains a study's jobs somewhere: this process, worker processes, a cluster. Built by an ``executor``
    component's factory, ``factory(params, context: ExecutorContext) -> Executor``."""

    machines: int
    """How many machines the runs may land on (1 but on a cluster): listeners are told it."""

    def run(self, jobs: list[RunJob], collect: Collect) -> None:
        """Train every job (``context.train_here``, or a worker of its own), calling ``collect`` with each outcome as it
        arrives. On a stop signal (:func:`unpaired.signals.stop_requested`, or :class:`StopRequested` raised while
        waiting), ask the running jobs to stop (they checkpoint), start no other, collect the running ones, and raise
        :class:`unpaired.errors.StopRequested`. A worker that dies is collected as a failed outcome."""

    def close(self) -> None:
        """Release what the executor holds (a cluster connection); called once, however the study ended."""
