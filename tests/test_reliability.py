"""Concurrency and faults: one owner per run, several invocations at once, signals to a study with workers."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import TINY_BASE, UNPAIRED, run_cli, start_mlflow_server, stop_mlflow_server, write_study, write_synthetic_folder
from unpaired.cli import main
from unpaired.errors import Note, StopRequested
from unpaired.storage.lease import Lease, LeaseHeld, heartbeat_interval
from unpaired.signals import stop_on_signals
from unpaired.storage.run_folder import RunFolder


def test_a_lease_is_exclusive_while_its_holder_lives_and_taken_over_when_it_dies(tmp_path):
    path = tmp_path / "run" / "lease.json"
    with Lease(path) as first:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(LeaseHeld, match=f"is being worked on by pid {os.getpid()}"):
            Lease(path).acquire()
    assert not path.exists()  # released

    # a holder killed without releasing: a process that no longer runs
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    path.write_text(json.dumps({**first.holder, "pid": int(dead), "token": "dead"}))
    with Lease(path) as taker:
        assert json.loads(path.read_text())["token"] == taker.holder["token"]


def test_a_lease_from_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("UNPAIRED_LEASE_TIMEOUT", "3")
    path = tmp_path / "lease.json"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "remote"}))
    with pytest.raises(LeaseHeld, match="pid 1 on elsewhere"):
        Lease(path).acquire()  # its heartbeat (the file's mtime) is fresh
    old = time.time() - 10
    os.utime(path, (old, old))
    with Lease(path):
        before = path.stat().st_mtime
        time.sleep(1.2)  # the holder's thread refreshes the heartbeat every timeout / 6 (at least 0.5 s)
        assert path.stat().st_mtime > before


def test_a_lease_timeout_that_is_no_number_of_seconds_or_would_take_over_live_leases_is_refused_before_anything(tmp_path, monkeypatch, capsys):
    """'abc' ended in a traceback; a negative or NaN one was taken: another host would take over (or never) the leases
    of runs still training."""
    study = write_study(tmp_path / "s.yaml", "s")
    for value in ["abc", "-5", "nan", "inf", "1"]:
        monkeypatch.setenv("UNPAIRED_LEASE_TIMEOUT", value)
        assert main(["run", str(study), "--out", str(tmp_path / "out"), "tracking.enabled=false"]) == 2
        expected = f"error: UNPAIRED_LEASE_TIMEOUT is {value!r}: give the seconds without a heartbeat after which another host's lease"
        assert expected in capsys.readouterr().err and not (tmp_path / "out").exists()
    monkeypatch.setenv("UNPAIRED_LEASE_TIMEOUT", "2.5")
    assert heartbeat_interval() == 0.5


@pytest.mark.slow
def test_two_invocations_at_once_train_each_run_exactly_once(tmp_path, monkeypatch):
    """Both start on a fresh SQLite store (whose first use must be serialised), then share the runs:
    each run is trained once, has one MLflow child, and each epoch is logged once."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/fresh/mlflow.db")
    study = write_study(tmp_path / "twice.yaml", "twice", grid={"generator.n_blocks": [1, 2]}, seeds=[0, 1])
    command = [UNPAIRED, "run", str(study), "--out", str(tmp_path / "out"), "--quiet"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    for process, (_, err) in zip((first, second), outputs):
        assert process.returncode == 0, err
    done = [int(out.split("done ")[1].split(",")[0]) for out, _ in outputs]
    assert sum(done) == 4, outputs

    index = json.loads((tmp_path / "out" / "study.json").read_text())
    for run in index["runs"]:
        assert json.loads((tmp_path / "out" / run["folder"] / "result.json").read_text())["status"] == "finished"
        assert not (tmp_path / "out" / run["folder"] / "lease.json").exists()
    client = MlflowClient()
    experiment = client.get_experiment_by_name("twice").experiment_id
    children = client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'run'")
    assert sorted(c.data.tags["unpaired.run_id"] for c in children) == sorted(r["run_id"] for r in index["runs"])
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "cycle_A")] == [1, 2]


def group_is_gone(pgid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "whole_group", "jobs"),
    [(signal.SIGINT, True, 2), (signal.SIGINT, False, 2), (signal.SIGTERM, False, 2), (signal.SIGTERM, False, 1), (signal.SIGHUP, True, 2)],
    ids=["ctrl-c", "sigint-to-main", "sigterm-to-main", "sigterm-without-workers", "hang-up"],  # hang-up: its terminal closed
)
def test_a_signal_stops_every_worker_with_a_checkpoint_and_leaves_no_process(tmp_path, monkeypatch, signum, whole_group, jobs):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    base = {**TINY_BASE, "data": {**TINY_BASE["data"], "n_train": 200}, "train": {**TINY_BASE["train"], "epochs": 3, "decay_epochs": 0}}
    study = tmp_path / "stopped.yaml"
    study.write_text(yaml.safe_dump({"name": "stopped", "base": base, "grid": {"generator.n_blocks": [1, 2, 3]}}))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [UNPAIRED, "run", str(study), "--out", str(out), "--jobs", str(jobs), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("*/*/history.json"))) < jobs and time.monotonic() < deadline:  # each worker is into epoch 2
        time.sleep(0.1)
    assert len(list(out.glob("*/*/history.json"))) == jobs, "the workers did not get going"
    (os.killpg if whole_group else os.kill)(process.pid, signum)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert f"interrupted {jobs}" in stdout and f"stopped by signal {signum}: run the same command again to resume" in stdout
    assert group_is_gone(process.pid), "a process of the command outlived it"
    started = sorted(p.parent.parent for p in out.glob("*/*/checkpoints/*.pt"))
    assert len(started) == jobs and not list(out.glob("*/*/result.json")) and not list(out.glob("*/*/lease.json"))
    for folder in started:  # stopped mid-epoch, with a checkpoint to resume from
        assert RunFolder(folder).load_checkpoint().state.step_in_epoch > 0
    client = MlflowClient()
    experiment = client.get_experiment_by_name("stopped").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'study'")
    children = client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'run'")
    assert parent.info.status == "KILLED" and [c.info.status for c in children] == ["KILLED"] * jobs


def test_a_hang_up_stops_the_work_unless_the_command_was_told_to_ignore_it(monkeypatch):
    """A dropped SSH connection (SIGHUP) killed a study outright, losing every run's steps since its last checkpoint; a
    study started with ``nohup`` must still train on through one."""
    left = []  # this process's own terminal, if it has one, stays where it is
    monkeypatch.setattr("unpaired.signals._leave_the_terminal", lambda: left.append(True))
    for ignored in (False, True):
        outside = signal.SIG_IGN if ignored else (lambda signum, frame: None)  # a handler of the caller's, not death
        before = signal.signal(signal.SIGHUP, outside)
        try:
            with stop_on_signals():
                assert (signal.getsignal(signal.SIGHUP) is signal.SIG_IGN) is ignored
                if not ignored:
                    with pytest.raises(StopRequested) as stopped:
                        os.kill(os.getpid(), signal.SIGHUP)
                        time.sleep(1)
                    assert stopped.value.signum == signal.SIGHUP and left == [True]
            assert signal.getsignal(signal.SIGHUP) is outside
        finally:
            signal.signal(signal.SIGHUP, before)


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_study_whose_terminal_closes_checkpoints_every_run_and_stops(tmp_path, jobs):
    """The terminal of a study trained in the foreground closes (its SSH connection dropped): the study gets a hang-up,
    and every write to the terminal fails from then on (EIO), the progress bar's first. It must still checkpoint
    mid-epoch and stop, as on Ctrl-C, instead of dying with the steps since its last checkpoint."""
    base = {**TINY_BASE, "data": {**TINY_BASE["data"], "n_train": 200}, "train": {**TINY_BASE["train"], "epochs": 50, "decay_epochs": 0}}
    study = tmp_path / "hung.yaml"
    study.write_text(yaml.safe_dump({"name": "hung", "base": base, "grid": {"generator.n_blocks": [1, 2][:jobs]}, "tracking": {"enabled": False}}))
    out = tmp_path / "out"
    terminal, its_side = os.openpty()
    fcntl.ioctl(its_side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size: tqdm draws nothing in 0 columns
    process = subprocess.Popen(
        [UNPAIRED, "run", str(study), "--out", str(out), "--jobs", str(jobs)],
        stdin=its_side,
        stdout=its_side,
        stderr=its_side,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # the pty becomes the study's controlling terminal
    )
    os.close(its_side)
    shown = bytearray()
    try:
        deadline = time.monotonic() + 120
        drawn = b"\rn_blocks=1 seed 0:" if jobs == 1 else re.compile(rb"n_blocks=2 seed 0: epoch 1/50[^\n]*\n")  # a bar, or a worker's line
        while (len(list(out.glob("*/*/history.json"))) < jobs or not re.search(drawn, shown)) and time.monotonic() < deadline:  # into epoch 2
            if select.select([terminal], [], [], 0.1)[0]:  # reading the screen: a terminal nobody reads blocks its writer
                shown.extend(os.read(terminal, 4096))
        assert len(list(out.glob("*/*/history.json"))) == jobs and re.search(drawn, shown), shown.decode(errors="replace")
        os.close(terminal)  # the connection drops: the kernel hangs the terminal up
        assert process.wait(timeout=60) == 128 + signal.SIGHUP
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    checkpoints = list(out.glob("*/*/checkpoints/*.pt"))
    assert len(checkpoints) == jobs and not list(out.glob("*/*/lease.json")) and not list(out.glob("*/*/result.json"))
    for checkpoint in checkpoints:
        assert RunFolder(checkpoint.parent.parent).load_checkpoint().state.step_in_epoch > 0  # written at the hang-up


@pytest.mark.slow
def test_workers_whose_study_was_killed_outright_checkpoint_and_stop_instead_of_training_on(tmp_path):
    """``kill -9`` of a ``--jobs 2`` study's own process left its two workers training on, orphans: they held their runs
    (a rerun found them busy) and, on a GPU, its memory, until their runs ended, which could be hours."""
    base = {**TINY_BASE, "data": {**TINY_BASE["data"], "n_train": 200}, "train": {**TINY_BASE["train"], "epochs": 50, "decay_epochs": 0}}
    study = tmp_path / "orphaned.yaml"
    study.write_text(yaml.safe_dump({"name": "orphaned", "base": base, "grid": {"generator.n_blocks": [1, 2, 3]}, "tracking": {"enabled": False}}))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [UNPAIRED, "run", str(study), "--out", str(out), "--jobs", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*/*/history.json"))) < 2 and time.monotonic() < deadline:  # each worker is into epoch 2
            time.sleep(0.1)
        assert len(list(out.glob("*/*/history.json"))) == 2, "the workers did not get going"
        process.kill()
        process.wait(timeout=10)
        assert group_is_gone(process.pid, within=30), "a worker trained on after the study's process was killed"
        _, stderr = process.communicate(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert stderr.count("the study's process ended: checkpointing and stopping") == 2, stderr
    assert "Traceback" not in stderr and "leaked" not in stderr, stderr
    started = sorted(p.parent.parent for p in out.glob("*/*/checkpoints/*.pt"))
    assert len(started) == 2 and not list(out.glob("*/*/result.json")) and not list(out.glob("*/*/lease.json"))
    for folder in started:  # stopped mid-epoch, with a checkpoint the rerun resumes from
        assert 1 <= RunFolder(folder).load_checkpoint().state.epoch < 50


def exported_generator(path: Path) -> Path:
    """A (untrained) tiny exported generator, as training writes one."""
    from unpaired.plugin_api.registry import default_registry
    from unpaired.storage.files import atomic_save
    from unpaired.storage.records import ExportedGenerator

    config, norm = {"name": "resnet", "n_blocks": 1, "ngf": 4}, {"name": "instance"}
    registry = default_registry()
    network = registry.build("generator", config, registry.build("norm", norm))
    atomic_save(ExportedGenerator("AtoB", "0" * 12, config, norm, 32, network.state_dict()).to_file(), path)
    return path


def test_bad_inputs_to_translate_train_and_score_are_named_with_exit_code_2(tmp_path, capsys):
    def cli(*args: str) -> subprocess.CompletedProcess:  # the command in this process: the same exit codes and output
        code = main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    write_synthetic_folder(tmp_path / "images", n_train=1, n_test=2)
    images = tmp_path / "images" / "testA"
    text, png = tmp_path / "notes.txt", images / "00000.png"
    text.write_text("hello")
    for checkpoint, why in [
        (text, "is not a"),
        (png, "is not a"),
        (tmp_path / "missing.pt", "is not a"),
        (tmp_path, "is a folder without final generators"),
    ]:
        result = cli("translate", "--checkpoint", str(checkpoint), str(images), "--out", str(tmp_path / "out"))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith(f"error: {checkpoint} {why}"), result.stderr

    generator = exported_generator(tmp_path / "AtoB.pt")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    result = cli("translate", "--checkpoint", str(generator), str(images), "--out", str(tmp_path / "out"))
    assert result.returncode == 0 and "wrote 2 image(s)" in result.stdout
    assert f"warning: skipped an unreadable image: {images / 'broken.png'}" in result.stderr
    missing = cli("translate", "--checkpoint", str(generator), str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 2 and f"error: {tmp_path / 'nowhere'} does not exist" in missing.stderr

    binary = tmp_path / "spec.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    result = cli("train", str(binary), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and f"error: {binary}: 1 problem:\n  not a text file" in result.stderr

    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text(json.dumps({"name": "s", "runs": []}))
    result = cli("score", str(tmp_path / "study"))
    assert result.returncode == 1 and "holds no run that has finished yet: nothing to score" in result.stderr
    (tmp_path / "study" / "study.json").write_text('{"name": "s", "runs": [')  # the run folders are read instead
    result = cli("score", str(tmp_path / "study"))
    assert result.returncode == 1 and "read from the run folders instead" in result.stderr and "nothing to score" in result.stderr

    study = write_study(tmp_path / "s.yaml", "s")  # an output folder that is a file, or under one: said before anything starts
    (tmp_path / "variant.yaml").write_text(yaml.safe_dump(TINY_BASE))
    for out, which in [(text, "it"), (text / "sub", str(text))]:
        for command in ("run", "plan"):
            result = cli(command, str(study), "--out", str(out))
            assert result.returncode == 2 and f"error: the output folder {out} cannot be made: {which} is a file" in result.stderr
        result = cli("train", str(binary.with_name("variant.yaml")), "--out", str(out))
        assert result.returncode == 2 and f"error: --out {out} cannot be made: {which} is a file" in result.stderr
    under = text / "sub"
    for command, args in [
        ("translate", ["--checkpoint", str(generator), str(images), "--out", str(under)]),
        ("data", ["export", "synthetic", str(under)]),
        ("report", [str(tmp_path / "study"), "--out", str(under / "report.html")]),
    ]:
        result = cli(command, *args)
        assert result.returncode == 2 and f"{under} cannot be made: {text} is a file; name a folder" in result.stderr, result.stderr
    result = cli("compare", str(text))  # a file that is not a study file is not read as a study's MLflow name alone
    assert result.returncode != 0 and f"error: {text} is a file but not a study file (those end in .yaml, .yml, .json)" in result.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (mounting one needs root); yields its folder and a function that leaves ``n`` bytes free."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root")

    def leave_free(n: int) -> None:
        (folder / "filler").write_bytes(b"")
        free = shutil.disk_usage(folder).free
        (folder / "filler").write_bytes(b"x" * max(0, free - n))

    yield folder, leave_free
    subprocess.run(["umount", str(folder)], check=True)


def test_files_written_atomically_get_the_permissions_open_would_give_them(tmp_path):
    """mkstemp makes its files private to their owner: results a group shares (a cluster's storage) must not be."""
    write = (
        f"from pathlib import Path; from unpaired.storage.files import atomic_write_text; "
        f"atomic_write_text(Path({str(tmp_path)!r}) / 'report.html', 'x')"
    )
    subprocess.run(["bash", "-c", f'umask 027 && {sys.executable} -c "{write}"'], check=True)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o640


def test_a_full_disk_names_the_file_the_space_needed_and_keeps_the_previous_version(small_disk):
    from unpaired.storage.files import StorageError, atomic_save, load_tensors

    folder, leave_free = small_disk
    path = folder / "checkpoints" / "state.pt"
    atomic_save({"weights": torch.zeros(1000)}, path)
    leave_free(64 * 1024)
    with pytest.raises(StorageError) as error:
        atomic_save({"weights": torch.zeros(100_000)}, path)  # about 391 KiB
    assert re.match(
        rf"no space left to write {re.escape(str(path))}: it needs 39\d\.\d KiB, 6\d\.\d KiB are free there \(the previous"
        r" version, if any, is intact\)\. Free some space, then run the same command again\.$",
        str(error.value),
    ), str(error.value)
    assert torch.equal(load_tensors(path)["weights"], torch.zeros(1000))
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]  # no temporary file left


def test_a_run_on_a_full_disk_fails_with_the_reason_and_resumes_once_there_is_room(small_disk, tmp_path):
    from unpaired.config.resolved import resolve_variant
    from unpaired.plugin_api.registry import default_registry
    from unpaired.training.run import train_run

    folder, leave_free = small_disk
    registry = default_registry()
    variant = resolve_variant({**TINY_BASE, "generator": {"name": "resnet", "n_blocks": 2, "ngf": 8}}, registry)
    leave_free(48 * 1024)
    result = train_run(variant, RunFolder(folder / "run"), registry, show_progress=False).result
    assert result.status == "failed" and result.error.startswith("StorageError: no space left to write ")
    assert "/run/checkpoints/epoch-0001-step-" in result.error
    (folder / "filler").unlink()
    assert train_run(variant, RunFolder(folder / "run"), registry, show_progress=False).result.status == "finished"


KILLER = """
    import os
    from unpaired.plugin_api import hookimpl

    class Killer:
        '''Dies like kill -9 at a chosen point: right after a run's result is written, or after its MLflow child exists.'''

        def __init__(self, point):
            self.point = point

        @hookimpl(tryfirst=True)
        def unpaired_on_variant_end(self, run, result):
            if self.point == "after-result":
                os._exit(9)

        @hookimpl(trylast=True)
        def unpaired_on_variant_start(self, run):
            if self.point == "after-child":
                os._exit(9)

    @hookimpl
    def unpaired_study_listeners(study):
        point = os.environ.get("KILL_AT")
        return [Killer(point)] if point else []
"""


def children_of(client: MlflowClient, study: str) -> list:
    experiment = client.get_experiment_by_name(study).experiment_id
    return client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'run'")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after-result", "after-child"])
def test_a_kill_at_either_mlflow_window_leaves_no_duplicate_and_the_rerun_completes_the_tracking(tmp_path, monkeypatch, make_distribution, point):
    """after-result: the run finished but its MLflow child never got its metrics (the rerun skips the run as done);
    after-child: the child exists but the process died before the run folder recorded it (simulated by removing the record)."""
    make_distribution("killer", "1.0", {"killer": "killer_plugin"}, {"killer_plugin.py": KILLER})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    study = write_study(tmp_path / "killed.yaml", "killed")
    command = ["run", str(study), "--out", str(tmp_path / "out"), "--quiet"]
    monkeypatch.setenv("KILL_AT", point)
    assert run_cli(*command).returncode == 9
    (folder,) = [p.parent for p in (tmp_path / "out").glob("*/*/mlflow_run.json")]
    if point == "after-child":
        (folder / "mlflow_run.json").unlink()
    monkeypatch.delenv("KILL_AT")
    rerun = run_cli(*command)
    assert rerun.returncode == 0, rerun.stderr
    assert ("skipped 1" if point == "after-result" else "done 1") in rerun.stdout

    client = MlflowClient()
    (child,) = children_of(client, "killed")
    assert child.info.status == "FINISHED" and child.data.tags["unpaired.status"] == "finished"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "cycle_A")] == [1, 2]
    assert {"spec.json", "result.json", "history.csv"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
    experiment = client.get_experiment_by_name("killed").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'study'")  # the killed one's, reopened
    assert parent.info.status == "FINISHED" and parent.data.tags["unpaired.invocations"] == "2"
    assert json.loads((folder / "mlflow_run.json").read_text())["complete"] is True


@pytest.mark.slow
def test_a_tracking_server_that_dies_mid_study_does_not_stop_training(tmp_path):
    """The runs after the server went away train and finish in bounded time; the summary names the runs whose
    tracking is incomplete; once the server is back, the same command completes their MLflow runs."""
    server, uri = start_mlflow_server(tmp_path)
    study = write_study(tmp_path / "offline.yaml", "offline", grid={"generator.n_blocks": [1, 2, 3]}, tracking={"uri": uri})
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [UNPAIRED, "run", str(study), "--out", str(tmp_path / "out"), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out").glob("*/*/result.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop_mlflow_server(server)
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert time.monotonic() - started < 120, "runs waited on the dead server"
    assert "done 3, failed 0" in stdout and "note: MLflow tracking is incomplete for " in stdout
    assert "Traceback" not in stderr and "warning: MLflow tracking of run" in stderr
    assert len(list((tmp_path / "out").glob("*/*/result.json"))) == 3

    server, _ = start_mlflow_server(tmp_path, port=int(uri.rsplit(":", 1)[1]))
    try:
        rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert rerun.returncode == 0 and "skipped 3" in rerun.stdout and "note:" not in rerun.stdout, rerun.stderr
        children = children_of(MlflowClient(uri), "offline")
        assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
        client = MlflowClient(uri)
        for child in children:
            assert [m.step for m in client.get_metric_history(child.info.run_id, "cycle_A")] == [1, 2]
    finally:
        stop_mlflow_server(server)


def corrupt(path: Path, how: str) -> None:
    if how == "weights":  # finite garbage in one weight: torch.load would never notice
        stored = torch.load(path, weights_only=True)
        next(iter(stored["model"]["networks"]["G_AB"].values())).add_(1e-3)
        torch.save(stored, path)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(os.urandom(path.stat().st_size))


@pytest.mark.parametrize("how", ["weights", "truncated", "random"])
def test_a_corrupt_checkpoint_is_named_set_aside_and_the_run_starts_again(tmp_path, how):
    from conftest import AtStep, crash
    from unpaired.config.resolved import resolve_variant
    from unpaired.plugin_api.registry import Registry
    from unpaired.training.run import train_run

    registry = Registry.from_entry_points()
    variant = resolve_variant({**TINY_BASE, "train": {**TINY_BASE["train"], "log_every": 1}}, registry)
    straight = train_run(variant, RunFolder(tmp_path / "straight"), registry, show_progress=False).result
    folder = RunFolder(tmp_path / "run")
    with registry.listening(AtStep(8, crash)):  # in epoch 2, after the epoch-1 checkpoint
        assert train_run(variant, folder, registry, show_progress=False).result.status == "failed"
    checkpoint = folder.latest_checkpoint()
    corrupt(checkpoint, how)
    with pytest.warns(
        UserWarning, match=rf"{re.escape(str(checkpoint))} is (corrupt|a torn torch archive|not a torch file).*starts again from the beginning"
    ):
        result = train_run(variant, folder, registry, show_progress=False).result
    assert result.status == "finished" and result.final_losses == straight.final_losses
    assert (checkpoint.parent / f"{checkpoint.name}.corrupt").is_file()
    a, b = RunFolder(tmp_path / "straight").load_checkpoint().model, folder.load_checkpoint().model
    assert all(torch.equal(a["networks"][n][k], b["networks"][n][k]) for n in a["networks"] for k in a["networks"][n])


@pytest.mark.slow
def test_a_corrupt_checkpoint_stops_the_run_when_asked_and_corrupt_records_never_stop_a_study(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "on_corrupt_checkpoint": "stop"}}
    study = tmp_path / "records.yaml"
    study.write_text(yaml.safe_dump({"name": "records", "base": base, "grid": {"generator.n_blocks": [1, 2, 3]}}))
    command = ["run", str(study), "--out", str(tmp_path / "out"), "--quiet"]
    assert run_cli(*command).returncode == 0
    one, two, three = (RunFolder(p.parent) for p in sorted((tmp_path / "out").glob("*/*/result.json")))
    (one.path / "result.json").write_text('{"status": "finished", "run_id": ')  # cut short
    (two.path / "mlflow_run.json").write_text("[]")
    (three.path / "result.json").unlink()
    corrupt(three.latest_checkpoint(), "random")

    rerun = run_cli(*command)
    assert rerun.returncode == 1, rerun.stderr
    assert "done 1, failed 1, skipped 1" in rerun.stdout and "CorruptFileError: " in rerun.stdout and "is not a torch file" in rerun.stdout
    assert f"{one.path / 'result.json'} is not valid JSON" in rerun.stderr  # named, set aside, the run resumed
    assert one.read_result().finished and (one.path / "result.json.corrupt").is_file()
    assert two.status(two.read_result().run_id) == "done"
    children = children_of(MlflowClient(), "records")
    assert len(children) == 3 and sorted(c.info.status for c in children) == ["FAILED", "FINISHED", "FINISHED"]

    two.spec_file.write_bytes(b"\x00garbage")
    scored = run_cli("score", str(tmp_path / "out"))  # each run on its own: the broken ones are named, the others scored
    assert scored.returncode == 1
    assert [line.split(": ")[0] for line in scored.stdout.splitlines()] == [str(one.path), str(three.path)]
    assert f"error: {two.path}: {two.spec_file} is not valid JSON" in scored.stderr


def test_a_cpu_run_resumes_with_the_thread_count_it_started_with(tmp_path):
    """On a CPU the numbers depend on the thread count (1 vs 2 threads give different weights here), so a run
    interrupted under --jobs 1 (2 threads) and resumed under --jobs 2 (1 thread per worker) would match neither."""
    from conftest import AtStep, crash
    from unpaired.config.resolved import resolve_variant
    from unpaired.plugin_api.registry import Registry
    from unpaired.training.run import train_run

    registry = Registry.from_entry_points()
    variant = resolve_variant(
        {**TINY_BASE, "generator": {"name": "resnet", "n_blocks": 1, "ngf": 8}, "train": {**TINY_BASE["train"], "log_every": 1}}, registry
    )
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        straight = train_run(variant, RunFolder(tmp_path / "straight"), registry, show_progress=False).result
        folder = RunFolder(tmp_path / "run")
        with registry.listening(AtStep(8, crash)):
            assert train_run(variant, folder, registry, show_progress=False).result.status == "failed"
        torch.set_num_threads(1)
        with pytest.warns(Note) as notes:
            resumed = train_run(variant, folder, registry, show_progress=False).result
        assert torch.get_num_threads() == 1  # as it was before the run
    finally:
        torch.set_num_threads(before)
    assert f"{folder} resumes with 2 CPU threads, as it started (this process had 1)" in str(notes[0].message)
    assert resumed.final_losses == straight.final_losses and resumed.threads == straight.threads == 2
    a, b = RunFolder(tmp_path / "straight").load_checkpoint().model, folder.load_checkpoint().model
    assert all(torch.equal(a["networks"][n][k], b["networks"][n][k]) for n in a["networks"] for k in a["networks"][n])
