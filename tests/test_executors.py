"""Executors are a component kind: chosen and validated like any other, their settings offered as `unpaired run` options,
and what every executor collects is one `RunOutcome`, whose words are the run lifecycle's."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_BASE, run_cli, write_study
from unpaired import hookimpl
from unpaired.config.overrides import merge
from unpaired.config.study import load_study
from unpaired.devices import DeviceError
from unpaired.execution.jobs import make_jobs
from unpaired.execution.ray_executor import _EpochLines
from unpaired.execution.runner import run_study, select_runs
from unpaired.execution.worker import outcome_path, read_outcome, write_job
from unpaired.plugin_api.executors import RunJob
from unpaired.storage.lease import LeaseHeld
from unpaired.storage.run_folder import RunFolder
from unpaired.storage.lifecycle import RunOutcome, StudySummary, outcome_of_exception
from unpaired.plugin_api.lifecycle import RunResult


def test_a_study_chooses_its_executor_and_settings_validated_by_that_executor(registry, tmp_path):
    study = load_study(write_study(tmp_path / "ray.yaml", "ray-study", execution={"executor": "ray", "cpus_per_run": 2}), registry)
    assert study.execution.component.name == "ray" and study.execution.params.cpus_per_run == 2.0
    plain = load_study(write_study(tmp_path / "plain.yaml", "plain"), registry)
    assert plain.execution.as_dict() == {"name": "local", "jobs": None, "runs_per_gpu": "auto"}

    unknown = write_study(tmp_path / "unknown.yaml", "unknown", execution={"executor": "slurm"})
    result = run_cli("validate", str(unknown))
    assert result.returncode == 2 and "execution.executor: unknown executor 'slurm'." in result.stderr
    assert "Available: local, ray" in result.stderr
    misspelt = write_study(tmp_path / "misspelt.yaml", "misspelt", execution={"executor": "ray", "cpus_per_runn": 2}, seeds=[0, 0])
    result = run_cli("validate", str(misspelt))
    assert result.returncode == 2 and "execution.cpus_per_runn" in result.stderr and "cpus_per_run" in result.stderr
    assert "seeds: each seed may appear once" in result.stderr  # with every other problem, at once
    local_only = write_study(tmp_path / "local.yaml", "local-only", execution={"jobs": 0})
    result = run_cli("validate", str(local_only))
    assert result.returncode == 2 and "execution.jobs" in result.stderr

    kept_for_ray = write_study(tmp_path / "kept.yaml", "kept", execution={"cpus_per_run": 2, "jobs": 2})
    study = load_study(kept_for_ray, registry)
    assert study.execution.as_dict() == {"name": "local", "jobs": 2, "runs_per_gpu": "auto"}
    result = run_cli("validate", str(kept_for_ray))
    assert result.returncode == 0
    assert "warning: execution.cpus_per_run is a setting of the ray executor; local, which trains the study here, leaves it aside" in result.stderr


def test_run_offers_every_executor_setting_and_refuses_one_the_chosen_executor_lacks(tmp_path):
    helped = " ".join(run_cli("run", "--help").stdout.split())  # unwrapped
    for option in ("--executor {local,ray}", "--jobs", "--address", "--cpus-per-run", "--gpus-per-run", "--max-retries"):
        assert option in helped, option
    assert "(ray executor)" in helped and "(local executor)" in helped

    study = write_study(tmp_path / "s.yaml", "s", tracking={"enabled": False})
    refused = run_cli("run", str(study), "--out", str(tmp_path / "out"), "--cpus-per-run", "2")
    assert refused.returncode == 1
    assert "--cpus-per-run is a setting of the ray executor, not of local: add --executor ray" in refused.stderr
    bad = run_cli("run", str(study), "--out", str(tmp_path / "out"), "--jobs", "none")
    assert bad.returncode == 1 and "--jobs: " in bad.stderr and "valid integer" in bad.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*/*"))  # refused before anything trained


def test_the_outcome_of_a_result_is_the_lifecycle_s_transition(registry, tmp_path):
    finished = RunResult(status="finished", run_id="r")
    assert RunOutcome.of_result(finished).outcome == "trained"
    assert RunOutcome.of_result(finished, reused=True).outcome == "skipped"
    unusable = RunOutcome.of_result(finished.model_copy(update={"scoring_problems": ["fid_a2b is nan"]}))
    assert (unusable.outcome, unusable.detail) == ("failed", "the scoring failed: fid_a2b is nan")
    assert outcome_of_exception("r", KeyboardInterrupt()).outcome == "failed"
    assert outcome_of_exception("r", LeaseHeld(tmp_path / "lease.json", {"pid": 7, "host": "h"})).detail == "pid 7 on h"

    summary = StudySummary()
    runs = load_study(write_study(tmp_path / "g.yaml", "g", grid={"generator.n_blocks": [1, 2, 3]}, seeds=[0, 1]), registry).runs
    outcomes = ["trained", "skipped", "failed", "interrupted", "busy", "not-started"]
    for run, outcome in zip(runs, outcomes):
        summary.record(run, RunOutcome(outcome, detail="why"))
    assert [len(summary.done), len(summary.skipped), len(summary.failed), len(summary.interrupted), len(summary.busy)] == [1] * 5
    assert str(summary).startswith("done 1, failed 1, skipped 1 (finished earlier), interrupted 1, busy 1")


def test_a_worker_process_s_outcome_is_read_back_and_a_missing_one_names_the_exit_status(registry, tmp_path):
    study = load_study(write_study(tmp_path / "w.yaml", "w"), registry)
    (job,) = make_jobs(study.runs, lambda run: tmp_path / "run", [])
    job_file = write_job(job, tmp_path / "jobs" / "one.job")
    assert pickle.loads(job_file.read_bytes()) == job

    outcome_path(job_file).write_bytes(pickle.dumps(RunOutcome("trained", RunResult(status="finished", run_id=job.run_id))))
    assert read_outcome(job_file, job, 0).outcome == "trained"
    assert not job_file.exists() and not outcome_path(job_file).exists()  # consumed

    write_job(job, job_file)
    died = read_outcome(job_file, job, -9)
    assert died.outcome == "failed" and died.detail.startswith("RuntimeError: its worker exited with status -9 before recording")
    outcome_path(job_file).write_bytes(b"torn")
    assert read_outcome(job_file, job, 0).outcome == "failed"


@pytest.mark.parametrize("name", ["local", "ray"])
def test_the_built_in_executors_are_plugins_registered_like_any_component(registry, name):
    component = registry.get("executor", name)
    assert component.distribution == "unpaired" and component.factory.__module__ == "unpaired_plugins.executors"


def test_the_local_executor_trains_one_run_per_gpu_unless_told_otherwise(registry, monkeypatch, tmp_path):
    """``jobs`` left out: ``runs_per_gpu`` on each visible GPU (auto: one, as measured: a captured run fills an H200), and one
    at a time in this process without a GPU; ``jobs`` given: that many."""
    from unpaired.execution.jobs import train_job
    from unpaired.execution.worker import PROCESS_WORKERS
    from unpaired.plugin_api.executors import ExecutorContext
    from unpaired_plugins.executors import RUNS_PER_GPU

    def jobs(gpus: int, **settings: object) -> int:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        return registry.build("executor", {"name": "local", **settings}, ExecutorContext(tmp_path, print, False, train_job, PROCESS_WORKERS)).jobs

    assert RUNS_PER_GPU == 1
    assert (jobs(0), jobs(2), jobs(2, runs_per_gpu=3), jobs(2, jobs=5), jobs(0, jobs=3)) == (1, 2, 6, 5, 3)


class KilledLikeOutOfMemory:
    """A listener that kills the process training ``variant`` outright at its first step, as the system's out-of-memory
    killer would: no exception, no checkpoint, no outcome."""

    def __init__(self, variant: str):
        self.variant = variant

    @hookimpl
    def unpaired_on_step(self, run, epoch, step, losses, lr):
        if run.variant == self.variant:
            os.kill(os.getpid(), signal.SIGKILL)


class KillerPlugin:
    @hookimpl
    def unpaired_study_listeners(self, study):
        return [KilledLikeOutOfMemory("doomed")]


@pytest.mark.slow
def test_a_worker_killed_outright_fails_its_own_run_and_the_others_go_on(registry, tmp_path):
    """With --jobs 2, one worker killed by SIGKILL broke the whole process pool: every run still running or queued failed
    with 'BrokenProcessPool: A process in the process pool was terminated abruptly'."""
    base = merge(TINY_BASE, {"train": {"log_every": 1}})
    variants = {"first": {}, "doomed": {"generator": {"ngf": 6}}, "third": {"generator": {"ngf": 8}}, "fourth": {"generator": {"ngf": 10}}}
    study = load_study(write_study(tmp_path / "s.yaml", "killed", base, variants=variants, tracking={"enabled": False}), registry)
    registry.add_plugin(KillerPlugin(), "killer", "tests", "0")
    execution = registry.resolve("executor", {"name": "local", "jobs": 2})
    summary = run_study(study, tmp_path / "out", registry, select_runs(study, None, None), False, lambda _: None, execution)
    assert sorted(run.variant for run in summary.done) == ["first", "fourth", "third"]
    ((doomed, why),) = summary.failed
    assert doomed.variant == "doomed"
    killed = "the worker process training it was killed by SIGKILL (as the system does to the largest process when memory runs out)"
    assert why == f"RuntimeError: {killed}; the other runs went on"


KILLED_WHILE_SHOWING_PROGRESS = """
import os, signal, sys
from unpaired.execution.local import worker_context
from unpaired.training.progress import Progress

def work(shown):
    progress = Progress("doomed seed 0", total=10, done=0, shown=shown)
    progress.step({"G_A": 1.0})
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    for shown in (True, False):
        worker = worker_context().Process(target=work, args=(shown,))
        worker.start()
        worker.join()
        print(worker.exitcode)
"""


def test_a_worker_killed_outright_leaves_nothing_behind_for_python_to_warn_of(tmp_path):
    """A study whose worker was killed (by the out-of-memory killer, say) ended with Python's "resource_tracker: There
    appear to be 1 leaked semaphore objects to clean up at shutdown": the lock of a progress bar the worker never drew."""
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WHILE_SHOWING_PROGRESS)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["-9", "-9"] and "leaked" not in done.stderr, done.stderr


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize(
    ("train", "error"),
    [
        ({"device": "cuda:7"}, r"^train.device is 'cuda:7' but (no CUDA GPU is|only \d CUDA GPU\(s\) are) visible"),
        pytest.param(
            {"cuda_graphs": "on"}, r"^train.cuda_graphs is on, but no CUDA GPU is visible to train on; use train.cuda_graphs: auto", marks=NO_GPU
        ),
    ],
    ids=["absent-gpu", "graphs-without-a-gpu"],
)
def test_a_device_this_machine_lacks_stops_the_local_study_before_any_run_starts(registry, tmp_path, jobs, train, error):
    """train.device: cuda:7 on a machine with fewer GPUs, or train.cuda_graphs: on (device auto) on one without a GPU,
    failed every run of the study one by one, each after its start."""
    base = merge(TINY_BASE, {"train": train})
    study = load_study(write_study(tmp_path / "s.yaml", "absent", base, grid={"generator.ngf": [4, 6]}, tracking={"enabled": False}), registry)
    execution = registry.resolve("executor", {"name": "local", "jobs": jobs})
    with pytest.raises(DeviceError, match=error):
        run_study(study, tmp_path / "out", registry, select_runs(study, None, None), False, lambda _: None, execution)
    assert not list((tmp_path / "out").glob("*/seed*"))


class SeesTheEnvironment:
    """Writes what ``$UNPAIRED_PROBE`` holds in the process training a run into the run's folder."""

    @hookimpl
    def unpaired_on_run_start(self, run):
        Path(run.folder).mkdir(parents=True, exist_ok=True)
        (Path(run.folder) / "probe.txt").write_text(os.environ.get("UNPAIRED_PROBE", "unset"))


class ProbePlugin:
    @hookimpl
    def unpaired_study_listeners(self, study):
        return [SeesTheEnvironment()]


@pytest.mark.slow
def test_each_worker_has_the_environment_of_the_study_that_started_it(registry, tmp_path, monkeypatch):
    """Workers are forked from a fork server, which keeps the environment of the study that started it: a later study
    of the same process (in a notebook, say, after setting CUDA_VISIBLE_DEVICES or UNPAIRED_CACHE) must not train with
    the first one's."""
    registry.add_plugin(ProbePlugin(), "probe", "tests", "0")
    execution = registry.resolve("executor", {"name": "local", "jobs": 2})
    for value in ("first", "second"):
        monkeypatch.setenv("UNPAIRED_PROBE", value)
        spec = write_study(tmp_path / f"{value}.yaml", value, TINY_BASE, grid={"generator.ngf": [4, 6]}, tracking={"enabled": False})
        study = load_study(spec, registry)
        summary = run_study(study, tmp_path / value, registry, select_runs(study, None, None), False, lambda _: None, execution)
        assert len(summary.done) == 2 and [p.read_text() for p in (tmp_path / value).glob("*/*/probe.txt")] == [value, value]


def test_the_ray_driver_shows_each_epoch_of_its_runs_once_from_their_folders(tmp_path, capsys):
    """Ray forwarded a task's own progress late, folded like lines of different tasks into one and dropped the last
    ones: the driver reads each run's history instead. A resumed run's earlier epochs are not shown again; a run started
    again from scratch is shown from its first epoch."""
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    row = {"lr": 2e-4, "G_A": 0.5, "epoch_seconds": 10.0, "it_per_s": 3.0}
    folder.write_history([{"epoch": epoch, **row} for epoch in (1, 2)])
    job = RunJob("abc", "deep", 0, {"train": {"epochs": 3, "decay_epochs": 2}}, folder.path)
    lines = _EpochLines([job])

    def shown_after(epochs: list[int]) -> list[str]:
        folder.write_history([{"epoch": epoch, **row} for epoch in epochs])
        os.utime(folder.history_file, ns=(time.time_ns(), time.time_ns() + 1))  # a stamp of its own, however fast
        lines.show_new(job)
        lines.show_new(job)  # nothing new
        return capsys.readouterr().err.splitlines()

    assert shown_after([1, 2]) == []
    assert shown_after([1, 2, 3, 4]) == [
        "deep seed 0: epoch 3/5, 3.0 it/s, 20 s left; lr=0.0002 G_A=0.5",
        "deep seed 0: epoch 4/5, 3.0 it/s, 10 s left; lr=0.0002 G_A=0.5",
    ]
    assert shown_after([1]) == ["deep seed 0: epoch 1/5, 3.0 it/s, 40 s left; lr=0.0002 G_A=0.5"]
    _EpochLines([]).show_new(job)  # quiet: nothing followed
    assert capsys.readouterr().err == ""


def test_a_study_trained_run_after_run_says_at_each_run_how_long_the_runs_left_would_take(monkeypatch, tmp_path):
    """A study of 18 runs on one GPU trains one run after another; nothing said when it would end but ``plan``."""
    from unpaired.execution import local
    from unpaired.plugin_api.executors import ExecutorContext

    clock = [0.0]
    monkeypatch.setattr(local, "monotonic", lambda: clock[0])
    endings = {"a": ("trained", 600.0), "b": ("rescored", 30.0), "c": ("trained", 1200.0), "d": ("trained", 0.0)}

    def train_here(job):
        outcome, seconds = endings[job.variant]
        clock[0] += seconds
        return RunOutcome(outcome)

    lines, collected = [], []
    context = ExecutorContext(tmp_path, lines.append, False, train_here, None)  # type: ignore[arg-type]
    jobs = [RunJob(name, name, 0, {}, tmp_path / name) for name in endings]
    local.LocalExecutor(1, context).run_serially(jobs, lambda job, outcome: collected.append(outcome.outcome))
    assert collected == ["trained", "rescored", "trained", "trained"]
    assert lines == [  # only runs trained to the end set the pace; a run scored again took no training
        f"[1/4] a seed 0 -> {tmp_path / 'a'}",
        f"[2/4] b seed 0 -> {tmp_path / 'b'} (3 run(s) left: about 30 min, at the 10 min each of the 1 trained so far)",
        f"[3/4] c seed 0 -> {tmp_path / 'c'} (2 run(s) left: about 20 min, at the 10 min each of the 1 trained so far)",
        f"[4/4] d seed 0 -> {tmp_path / 'd'} (1 run(s) left: about 15 min, at the 15 min each of the 2 trained so far)",
    ]
