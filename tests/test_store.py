"""The MLflow store as a hostile user meets it: killed while it is created, half-migrated, output paths full of quotes,
and a server that stops answering while a study is compared."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from conftest import TINY_BASE, UNPAIRED, write_study
from unpaired.config.overrides import merge
from unpaired.config.study import load_study
from unpaired.execution.runner import run_study, select_runs
from unpaired.plugin_api.registry import Registry
from unpaired.tracking.store import TrackingError, first_line, first_use_serialised

UNSCORED = merge(TINY_BASE, {"eval": {"metrics": []}})


def without_tracking_uri() -> dict[str, str]:
    """The environment with MLflow's default store: ``sqlite:///mlflow.db`` in the working directory."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_a_run_stopped_while_the_default_store_is_created_leaves_none_and_the_rerun_creates_it(tmp_path, signum):
    study = write_study(tmp_path / "first.yaml", "first", base=UNSCORED)
    command = [UNPAIRED, "run", str(study), "--out", str(tmp_path / "out")]
    started = subprocess.Popen(command, cwd=tmp_path, env=without_tracking_uri(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "mlflow.db.creating").exists() and started.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    started.send_signal(signum)
    _, stderr = started.communicate(timeout=60)
    assert started.returncode in (130, -signal.SIGKILL), stderr
    assert not (tmp_path / "mlflow.db").exists()  # what a stop leaves is the temporary file, never a half-built store

    rerun = subprocess.run(command, cwd=tmp_path, env=without_tracking_uri(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (child,) = client.search_runs([client.get_experiment_by_name("first").experiment_id], "tags.`unpaired.role` = 'run'")
    assert child.info.status == "FINISHED"


def downgraded(database: Path, runs: int) -> Path:
    """A whole store holding ``runs`` runs, then set back one schema revision: what a migration cut short leaves."""
    uri = f"sqlite:///{database}"
    with first_use_serialised(uri):
        pass
    client = MlflowClient(uri)
    for _ in range(runs):
        client.create_run(client.create_experiment(f"e{_}"))
    with sqlite3.connect(database) as db:
        db.execute("UPDATE alembic_version SET version_num = '1b5f0d9ad7c1'")
    return database


def test_a_half_migrated_store_is_refused_with_how_to_recover_it(tmp_path):
    empty = downgraded(tmp_path / "empty" / "mlflow.db", runs=0)
    with pytest.raises(TrackingError, match=r"is incomplete \(schema revision 1b5f0d9ad7c1, no runs\): creating it was interrupted") as refused:
        with first_use_serialised(f"sqlite:///{empty}"):
            pass
    assert f"mv {empty} {empty}.incomplete" in str(refused.value)

    study = write_study(tmp_path / "broken.yaml", "broken", base=UNSCORED)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{empty}"}
    result = subprocess.run([UNPAIRED, "run", str(study), "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "creating it was interrupted" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything is trained

    used = downgraded(tmp_path / "used" / "mlflow.db", runs=2)
    with pytest.raises(TrackingError, match=r"holds 2 run\(s\) with schema revision 1b5f0d9ad7c1, and MLflow [\d.]+ expects \w+\. Back it up"):
        with first_use_serialised(f"sqlite:///{used}"):
            pass
    (tmp_path / "garbage.db").write_bytes(b"not a database, but long enough to look like one's header" * 4)
    with pytest.raises(TrackingError, match="garbage.db cannot be read as a SQLite database"):
        with first_use_serialised(f"sqlite:///{tmp_path / 'garbage.db'}"):
            pass


def test_an_output_path_with_quotes_backslashes_and_accents_keeps_one_parent_and_one_child_per_run(tmp_path):
    out = tmp_path / 'o\'ut "q" back\\slash ü'
    study = load_study(write_study(tmp_path / "quoted.yaml", "quoted", base=UNSCORED, seeds=[0, 1]), Registry.from_entry_points())
    for invocation in range(3):
        for link in out.glob("*/*/mlflow_run.json"):
            link.unlink()  # as if killed before recording the child: the rerun must find it by its tags
        summary = run_study(study, out, Registry.from_entry_points(), select_runs(study, None, None), show_progress=False, announce=lambda _: None)
        assert len(summary.done if invocation == 0 else summary.skipped) == 2
    client = MlflowClient()
    experiment = client.get_experiment_by_name("quoted").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`unpaired.role` = 'study'")
    assert parent.data.tags["unpaired.out"] == str(out.resolve()) and parent.data.tags["unpaired.invocations"] == "3"
    children = client.search_runs([experiment], "tags.`unpaired.role` = 'run'")
    assert sorted(child.data.tags["unpaired.seed"] for child in children) == ["0", "1"]
    assert {child.info.status for child in children} == {"FINISHED"}


def test_a_tracking_uri_mlflow_cannot_use_is_named_as_a_store_not_as_a_server_that_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    study = load_study(write_study(tmp_path / "odd.yaml", "odd", base=UNSCORED), Registry.from_entry_points())
    with pytest.raises(TrackingError) as refused:
        run_study(study, tmp_path / "out", Registry.from_entry_points(), select_runs(study, None, None), show_progress=False, announce=print)
    assert str(refused.value).startswith("the MLflow store foo://bar cannot be used: ") and "answers" not in str(refused.value)
    assert "unsupported URI 'foo://bar'" in str(refused.value) and not list((tmp_path / "out").glob("*/*"))


def test_compare_against_a_server_that_never_answers_or_is_gone_ends_in_bounded_time_with_a_plain_message(tmp_path):
    stuck = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers: a SIGSTOPped server
    try:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{stuck.getsockname()[1]}"}
        started = time.monotonic()
        result = subprocess.run([UNPAIRED, "compare", "somestudy"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        elapsed = time.monotonic() - started
    finally:
        stuck.close()
    assert result.returncode == 1 and "is unreachable" in result.stderr and "bug" not in result.stderr, result.stderr
    assert elapsed < 30, f"compare waited {elapsed:.0f} s"
    gone = subprocess.run([UNPAIRED, "compare", "somestudy"], env=without_tracking_uri(), capture_output=True, text=True, cwd=tmp_path)
    assert gone.returncode == 1 and f"there is no MLflow store at {tmp_path / 'mlflow.db'}: run the study first" in gone.stderr
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store


def broken_store(database: Path, table: str) -> dict[str, str]:
    """The environment of a study tracked to a SQLite store at ``database`` whose ``table`` is gone: every MLflow call
    that reads or writes it fails in the database."""
    MlflowClient(f"sqlite:///{database}").create_experiment("other")
    with sqlite3.connect(database) as db:
        db.execute(f"DROP TABLE {table}")
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{database}"}


def test_a_store_whose_database_breaks_is_named_in_one_line_in_the_databases_own_words(tmp_path):
    """MLflow logs a traceback for each database error it raises, and SQLAlchemy may put a line of its own before the
    database's (a full disk's came as ``(raised as a result of Query-invoked autoflush; ...``): the warning or error
    names the database's error, and MLflow's log stays off the terminal. Broken mid-study, training goes on; broken
    before it, nothing trains."""
    study = write_study(tmp_path / "breaks.yaml", "breaks", base=UNSCORED)
    run = [UNPAIRED, "run", str(study), "--out", str(tmp_path / "out"), "--quiet"]
    mid_study = subprocess.run(run, env=broken_store(tmp_path / "metrics.db", "metrics"), capture_output=True, text=True, timeout=300)
    assert mid_study.returncode == 0 and "done 1, failed 0" in mid_study.stdout, mid_study.stderr
    database_said = r"\(MlflowException: [^()\n]*metrics[^()\n]*\)"  # SQLite's own words: "no such column: metrics.step"
    assert re.search(rf"MLflow tracking of run \w+ stopped {database_said}; training goes on", mid_study.stderr), mid_study.stderr
    assert re.search(rf"MLflow tracking of the study stopped {database_said}; the next `unpaired run`", mid_study.stderr)
    assert "MLflow tracking is incomplete for base seed 0: once the tracking store works again" in mid_study.stdout
    assert "Traceback" not in mid_study.stderr and "mlflow.store" not in mid_study.stderr

    database = tmp_path / "latest.db"
    env = broken_store(database, "latest_metrics")
    before = subprocess.run([*run[:4], str(tmp_path / "out2"), "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert before.returncode == 1, before.stderr
    assert f"error: the MLflow store sqlite:///{database} cannot be used: no such table: latest_metrics." in before.stderr
    assert "Traceback" not in before.stderr and "mlflow.store" not in before.stderr and not list((tmp_path / "out2").glob("*/*"))

    wrapped = sqlalchemy.exc.OperationalError("INSERT INTO metrics ...", {}, sqlite3.OperationalError("database or disk is full"))
    wrapped.add_detail("raised as a result of Query-invoked autoflush; consider using a session.no_autoflush block")
    try:
        try:
            raise wrapped
        except sqlalchemy.exc.OperationalError as error:
            raise MlflowException(error) from error  # as MLflow's database session raises it
    except MlflowException as error:
        assert str(error).startswith("(raised as a result of") and first_line(error) == "database or disk is full"
    assert first_line(MlflowException("API request to http://x failed\n<html>...")) == "API request to http://x failed"
