"""The ``launcher`` executor: each run is ``LAUNCHER python -m unpaired.execution.worker JOB_FILE``, ``parallel`` at once.

The launcher is any command that runs the rest of its command line somewhere: nothing (this machine),
``srun --ntasks=1 --gpus=1`` (a Slurm allocation), ``ssh gpu-3``, ``docker exec trainer``. The job
file and the outcome the worker leaves beside it are in the study's output folder, which the worker
must see (a shared file system). A stop signal is passed on to every running worker, which checkpoints
and stops; a rerun resumes. Written only against ``unpaired.plugin_api``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel, Field

from unpaired.plugin_api import ExecutorContext, RunJob, StopRequested, deferred_signals, hookimpl, stop_requested


class LauncherParams(BaseModel):
    launcher: str = Field("", description="the command each run's worker is started through, e.g. 'srun --ntasks=1' (default: none)")
    parallel: int = Field(1, ge=1, description="runs started at once")
    machines: int = Field(1, ge=1, description="how many machines the launcher may place runs on")


class LauncherExecutor:
    """Starts each job's worker through the launcher, ``parallel`` at a time, and collects the outcome it leaves."""

    def __init__(self, params: LauncherParams, context: ExecutorContext):
        self.prefix, self.parallel, self.machines = shlex.split(params.launcher), params.parallel, params.machines
        self.folder = context.out / ".launcher"
        self.announce = context.announce
        self.workers = context.workers

    def run(self, jobs, collect) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        queue, running = list(jobs), {}
        with deferred_signals():  # a stop signal is looked for between polls, then passed on to the workers
            while (queue or running) and stop_requested() is None:
                while queue and len(running) < self.parallel:
                    job = queue.pop(0)
                    running[self._start(job)] = job
                for process, job in [(p, j) for p, j in running.items() if p.poll() is not None]:
                    del running[process]
                    collect(job, self._outcome(job, process))
                time.sleep(0.2)
            if (signum := stop_requested()) is not None:
                self.announce(f"signal {signum}: the running runs checkpoint and stop; the queued ones are not started")
                for process in running:
                    process.send_signal(signum)
                for process, job in running.items():
                    process.wait()
                    collect(job, self._outcome(job, process))
                raise StopRequested(signum)

    def _start(self, job: RunJob) -> subprocess.Popen:
        command = self.workers.command(job, self._job_file(job))
        return subprocess.Popen([*self.prefix, *command], start_new_session=True, env=self._environment())  # signals come from here

    def _environment(self) -> dict[str, str]:
        """The workers' environment: with no launcher the ``parallel`` runs share this machine's cores, so each gets its
        share as ``OMP_NUM_THREADS`` (torch's thread count), unless it is set already; a launcher's machine is its own."""
        environment = dict(os.environ)
        if not self.prefix and self.parallel > 1:
            environment.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.parallel)))
        return environment

    def _outcome(self, job: RunJob, process: subprocess.Popen):
        return self.workers.outcome(job, self._job_file(job), process.returncode)

    def _job_file(self, job: RunJob) -> Path:
        return self.folder / f"{job.run_id}.job"

    def close(self) -> None:
        pass


@hookimpl
def unpaired_register_executors(register):
    register("launcher", LauncherExecutor, LauncherParams, "each run a process started through a launcher command (srun, ssh, ...)")
