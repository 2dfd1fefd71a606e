"""Concurrency and faults: one owner per run, several invocations at once, signals to a study with workers."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import UNPAIRED, run_cli, write_synthetic_folder
from unpaired.results.lease import Lease, LeaseHeld
from unpaired.results.run_folder import RunFolder

TINY_BASE = {
    "data": {"name": "synthetic", "size": 32, "n_train": 6, "n_test": 2},
    "generator": {"name": "resnet", "n_blocks": 1, "ngf": 4},
    "discriminator": {"name": "patchgan", "ndf": 4, "n_layers": 2},
    "train": {"epochs": 1, "decay_epochs": 1, "num_workers": 0},
    "samples": 1,
    "eval": {"fid": False},
}


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


def write_study(path: Path, name: str, **fields) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "base": TINY_BASE, **fields}, sort_keys=False))
    return path


def test_two_invocations_at_once_train_each_run_exactly_once(tmp_path, monkeypatch):
    """Both start on a fresh SQLite store (whose first use must be serialised), then share the runs:
    each run is trained once, has one MLflow child, and each epoch is logged once."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/fresh/mlflow.db")
    study = write_study(tmp_path / "twice.yaml", "twice", grid={"generator.n_blocks": [1, 2]}, seeds=[0, 1])
    command = [UNPAIRED, "run", str(study), "--out", str(tmp_path / "out"), "--quiet"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    for process, (out, err) in zip((first, second), outputs):
        assert process.returncode == 0, err
    done = [int(out.split("done ")[1].split(",")[0]) for out, _ in outputs]
    assert sum(done) == 4, outputs

    index = json.loads((tmp_path / "out" / "study.json").read_text())
    for run in index["runs"]:
        assert json.loads((tmp_path / "out" / run["folder"] / "result.json").read_text())["status"] == "finished"
        assert not (tmp_path / "out" / run["folder"] / "lease.json").exists()
    client = MlflowClient()
    experiment = client.get_experiment_by_name("twice").experiment_id
    children = client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'variant'")
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


@pytest.mark.parametrize(("signum", "whole_group", "jobs"), [(signal.SIGINT, True, 2), (signal.SIGINT, False, 2), (signal.SIGTERM, False, 2),
                                                         (signal.SIGTERM, False, 1)],
                         ids=["ctrl-c", "sigint-to-main", "sigterm-to-main", "sigterm-without-workers"])
def test_a_signal_stops_every_worker_with_a_checkpoint_and_leaves_no_process(tmp_path, monkeypatch, signum, whole_group, jobs):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    base = {**TINY_BASE, "data": {**TINY_BASE["data"], "n_train": 200}, "train": {**TINY_BASE["train"], "epochs": 3, "decay_epochs": 0}}
    study = tmp_path / "stopped.yaml"
    study.write_text(yaml.safe_dump({"name": "stopped", "base": base, "grid": {"generator.n_blocks": [1, 2, 3]}}))
    out = tmp_path / "out"
    process = subprocess.Popen([UNPAIRED, "run", str(study), "--out", str(out), "--jobs", str(jobs), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
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
    children = client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'variant'")
    assert parent.info.status == "KILLED" and [c.info.status for c in children] == ["KILLED"] * jobs


def exported_generator(path: Path) -> Path:
    """A (untrained) tiny exported generator, as training writes one."""
    from unpaired.plugin_api.registry import default_registry
    from unpaired.results.files import atomic_save
    from unpaired.results.records import ExportedGenerator

    config, norm = {"name": "resnet", "n_blocks": 1, "ngf": 4}, {"name": "instance"}
    registry = default_registry()
    network = registry.build("generator", config, registry.build("norm", norm))
    atomic_save(ExportedGenerator("AtoB", "0" * 12, config, norm, 32, network.state_dict()).to_file(), path)
    return path


def test_bad_inputs_to_translate_train_and_score_are_named_with_exit_code_2(tmp_path):
    write_synthetic_folder(tmp_path / "images", n_train=1, n_test=2)
    images = tmp_path / "images" / "testA"
    text, png = tmp_path / "notes.txt", images / "00000.png"
    text.write_text("hello")
    for checkpoint in (text, png, tmp_path / "missing.pt", tmp_path):
        result = run_cli("translate", "--checkpoint", str(checkpoint), str(images), "--out", str(tmp_path / "out"))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith(f"error: {checkpoint} is not a"), result.stderr

    generator = exported_generator(tmp_path / "AtoB.pt")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    result = run_cli("translate", "--checkpoint", str(generator), str(images), "--out", str(tmp_path / "out"))
    assert result.returncode == 0 and "wrote 2 image(s)" in result.stdout
    assert f"warning: skipped an unreadable image: {images / 'broken.png'}" in result.stderr
    missing = run_cli("translate", "--checkpoint", str(generator), str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 2 and f"error: {tmp_path / 'nowhere'} does not exist" in missing.stderr

    binary = tmp_path / "spec.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    result = run_cli("train", str(binary), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and f"error: {binary}: 1 problem:\n  not a text file" in result.stderr

    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text(json.dumps({"name": "s", "runs": []}))
    result = run_cli("score", str(tmp_path / "study"))
    assert result.returncode == 1 and "holds no run that has finished yet: nothing to score" in result.stderr
    (tmp_path / "study" / "study.json").write_text('{"name": "s", "runs": [')
    result = run_cli("score", str(tmp_path / "study"))
    assert result.returncode == 2 and f"error: {tmp_path / 'study' / 'study.json'} is not valid JSON" in result.stderr


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


def test_a_full_disk_names_the_file_the_space_needed_and_keeps_the_previous_version(small_disk):
    from unpaired.results.files import StorageError, atomic_save, load_tensors

    folder, leave_free = small_disk
    path = folder / "checkpoints" / "state.pt"
    atomic_save({"weights": torch.zeros(1000)}, path)
    leave_free(64 * 1024)
    with pytest.raises(StorageError) as error:
        atomic_save({"weights": torch.zeros(100_000)}, path)  # about 391 KiB
    assert re.match(rf"no space left to write {re.escape(str(path))}: it needs 39\d\.\d KiB, 6\d\.\d KiB are free there \(the previous"
                    r" version, if any, is intact\)\. Free some space, then run the same command again\.$", str(error.value)), str(error.value)
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
    result = train_run(variant, RunFolder(folder / "run"), registry, show_progress=False)
    assert result.status == "failed" and result.error.startswith("StorageError: no space left to write ")
    assert "/run/checkpoints/epoch-0001-step-" in result.error
    (folder / "filler").unlink()
    assert train_run(variant, RunFolder(folder / "run"), registry, show_progress=False).status == "finished"
