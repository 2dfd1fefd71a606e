"""The worker for executors that start one process per run (through ``srun``, ``ssh``, a batch system's launcher)::

    python -m unpaired.execution.worker JOB_FILE

trains the :class:`~unpaired.execution.jobs.RunJob` pickled in ``JOB_FILE`` (:func:`write_job`) and leaves its
:class:`~unpaired.storage.lifecycle.RunOutcome` beside it, written atomically, for :func:`read_outcome`. SIGINT or
SIGTERM makes the run checkpoint and stop (outcome ``interrupted``); a worker killed outright leaves no outcome,
which :func:`read_outcome` turns into a failure that names the exit status (the run resumes on the next try).
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from unpaired.execution.jobs import train_job
from unpaired.plugin_api.executors import RunJob
from unpaired.signals import stop_on_signals
from unpaired.storage.files import atomic_write_bytes
from unpaired.storage.lifecycle import RunOutcome, outcome_of_exception


def write_job(job: RunJob, path: Path) -> Path:
    """Pickle ``job`` to ``path`` for a worker; returns ``path``."""
    atomic_write_bytes(path, pickle.dumps(job))
    return path


def worker_command(job_file: Path) -> list[str]:
    """The command that trains the job of ``job_file`` (put a launcher before it: ``srun``, ``ssh HOST``)."""
    return [sys.executable, "-m", "unpaired.execution.worker", str(job_file)]


def outcome_path(job_file: Path) -> Path:
    """Where the worker of ``job_file`` leaves its outcome."""
    return job_file.with_name(job_file.name + ".outcome")


def read_outcome(job_file: Path, job: RunJob, exit_status: int | None) -> RunOutcome:
    """The outcome the worker of ``job_file`` left, or a failure naming ``exit_status`` when it left none; the job file
    and the outcome are removed (the run folder holds everything that lasts)."""
    try:
        outcome = pickle.loads(outcome_path(job_file).read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError) as error:
        reason = f"its worker exited with status {exit_status}" if exit_status is not None else "its worker left no outcome"
        return outcome_of_exception(job.run_id, RuntimeError(f"{reason} before recording how the run ended ({error})"))
    finally:
        for path in (job_file, outcome_path(job_file)):
            path.unlink(missing_ok=True)
    return outcome if isinstance(outcome, RunOutcome) else outcome_of_exception(job.run_id, TypeError(f"{job_file}: not an outcome"))


class ProcessWorkers:
    """:class:`unpaired.plugin_api.executors.Workers`: a job file, ``python -m unpaired.execution.worker JOB_FILE``,
    and the outcome it leaves beside it."""

    def command(self, job: RunJob, job_file: Path) -> list[str]:
        return worker_command(write_job(job, job_file))

    def outcome(self, job: RunJob, job_file: Path, exit_status: int | None) -> RunOutcome:
        return read_outcome(job_file, job, exit_status)


PROCESS_WORKERS = ProcessWorkers()


def main(argv: list[str]) -> int:
    """Train the job of ``argv[0]``; exit 0 whatever became of the run (its outcome says), 2 on bad usage."""
    if len(argv) != 1:
        print("usage: python -m unpaired.execution.worker JOB_FILE", file=sys.stderr)
        return 2
    job_file = Path(argv[0])
    job = pickle.loads(job_file.read_bytes())
    with stop_on_signals():
        outcome = train_job(job)
    atomic_write_bytes(outcome_path(job_file), pickle.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
