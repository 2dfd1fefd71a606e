"""Training a job in a worker, and making the jobs of a study's runs (the executor contract itself is the plugin
API's: :mod:`unpaired.plugin_api.executors`). An executor is only how to start workers and collect what they send back.

The study (``execution/runner.py``) plans which runs to train and makes one :class:`RunJob` of each; the
executor trains them, anywhere, calling ``collect`` with the :class:`RunOutcome` of each; the study records it.
In a worker, :func:`train_job` trains one job: the study's listeners follow it there, the driver's lease
timeout applies, and a stop signal makes it checkpoint and stop (the outcome is ``interrupted``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from unpaired.config.resolved import resolve_variant
from unpaired.config.study import PlannedRun
from unpaired.errors import print_notices_plainly
from unpaired.plugin_api.registry import Registry, default_registry
from unpaired.signals import stop_requested
from unpaired.storage.lease import TIMEOUT_ENV, lease_timeout
from unpaired.plugin_api.executors import RunJob
from unpaired.storage.lifecycle import RunOutcome
from unpaired.storage.run_folder import RunFolder
from unpaired.training.run import train_run


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


def count_line(total: int, pending: int, running: int, ended: dict[str, int]) -> str:
    """Where a study's runs trained at once stand: ``runs: 3/8 ended (2 trained, 1 failed), 2 running, 3 waiting``
    (``ended``: how many ended with each outcome; a run scored again counts as trained)."""
    trained, failed = ended.get("trained", 0) + ended.get("rescored", 0), ended.get("failed", 0)
    return f"runs: {total - pending}/{total} ended ({trained} trained, {failed} failed), {running} running, {pending - running} waiting"
