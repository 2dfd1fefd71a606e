"""What a hostile user or a broken machine does to a study: names that escape the output folder, tampered
checkpoints, corrupt leases and indexes, a hung tracking server, oversized specs, files of the wrong kind."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import (
    BROKEN_COMPONENTS,
    PIXEL_FEATURES,
    TINY_BASE,
    UNPAIRED,
    AtStep,
    crash,
    run_cli,
    unreadable_images,
    write_study,
    write_synthetic_folder,
)
from unpaired.config.overrides import merge
from unpaired.cli import main
from unpaired.config.study import load_study
from unpaired.errors import Notice
from unpaired.evaluation.rescore import rescore_folder
from unpaired.execution.jobs import make_jobs
from unpaired.execution.runner import run_study, select_runs
from unpaired.plugin_api.data import fingerprints
from unpaired.plugin_api.registry import Registry
from unpaired.storage.files import CorruptFileError, atomic_save
from unpaired.storage.lease import Lease, LeaseHeld
from unpaired.tracking.store import TrackingError
from unpaired.storage.records import Checkpoint, ExportedGenerator, TrainingState
from unpaired.storage.run_folder import RunFolder

TWO_EPOCHS = merge(TINY_BASE, {"train": {"epochs": 2, "decay_epochs": 0, "checkpoint_every": 1, "log_every": 1}})


def study_run(study_file: Path, out: Path, *listeners: object):
    registry = Registry.from_entry_points()
    study = load_study(study_file, registry)
    with registry.listening(*listeners):
        return run_study(study, out, registry, select_runs(study, None, None), show_progress=False, announce=lambda _: None)


def test_a_variant_name_that_would_leave_the_output_folder_is_refused_and_no_name_maps_outside(tmp_path):
    study = write_study(tmp_path / "dots.yaml", "dots", variants={"..": {"train": {"lr": 0.001}}, ".": {}, "ok": {"samples": 2}})
    result = run_cli("validate", str(study))
    assert result.returncode == 2
    assert "variants: '..' cannot name a variant: it names a folder outside the output folder" in result.stderr
    assert "variants: '.' cannot name a variant" in result.stderr and "'ok'" not in result.stderr
    out = tmp_path / "out"
    for name in ("..", ".", "...", ".hidden", "../../etc", "a/../..", ""):
        folder = RunFolder.in_study(out, name, 0, "abc").path
        assert folder.resolve().parent.parent == out.resolve() and not folder.parent.name.startswith("."), name


def test_a_checkpoint_whose_loss_sums_are_infinite_is_corrupt_even_with_a_matching_checksum(tmp_path):
    """A run stops at its first non-finite loss, so such sums were written by hand (they became final_losses = inf)."""
    state = TrainingState(epoch_sums=torch.tensor([0.5, float("inf")]))
    model = {"networks": {"G": {"weight": torch.ones(2)}}, "parts": {}}
    path = tmp_path / "epoch-0001-step-000000006.pt"
    atomic_save(Checkpoint("abc", {}, 32, state, model, {}, 1, {"AtoB": "G"}).to_file(), path)
    with pytest.raises(CorruptFileError, match=r"state.epoch_sums holds NaN or infinite values, so no checkpoint can be used from it"):
        Checkpoint.read(path)


def test_a_file_of_another_format_is_named_with_its_kind_in_plain_english(tmp_path):
    path = tmp_path / "AtoB.pt"
    atomic_save({"format": 1, "direction": "AtoB"}, path)
    with pytest.raises(CorruptFileError, match=r"is an exported generator of format 1; this version of unpaired reads format 2"):
        ExportedGenerator.read(path, "AtoB")


def test_a_checkpoint_with_infinite_weights_and_a_matching_checksum_is_set_aside_and_the_run_starts_again(tmp_path):
    study = write_study(tmp_path / "tampered.yaml", "tampered", base=TWO_EPOCHS, tracking={"enabled": False})
    out = tmp_path / "out"
    assert len(study_run(study, out, AtStep(8, crash)).failed) == 1  # epoch 1 (6 steps) checkpointed, then a crash
    (path,) = out.glob("*/*/checkpoints/*.pt")
    checkpoint = Checkpoint.read(path)
    weights = next(iter(checkpoint.model["networks"].values()))
    next(iter(weights.values())).view(-1)[0] = float("inf")
    atomic_save(checkpoint.to_file(), path)  # a checksum that matches the tampered weights
    with pytest.raises(CorruptFileError, match=r"holds NaN or infinite values, so no checkpoint can be used from it"):
        Checkpoint.read(path)

    rerun = run_cli("run", str(study), "--out", str(out), "--quiet")
    assert rerun.returncode == 0 and "done 1, failed 0" in rerun.stdout, rerun.stderr
    # a notice is one line, as the command's other warnings are: no Python warning with its source line
    assert f"warning: {path} is corrupt: " in rerun.stderr and "starts again from the beginning" in rerun.stderr
    assert "UserWarning" not in rerun.stderr and ".py:" not in rerun.stderr
    assert path.with_name(path.name + ".corrupt").is_file()
    folder = RunFolder(path.parent.parent)
    assert [row["epoch"] for row in folder.read_history()] == [1, 2]

    generator = folder.generator_path("AtoB")
    exported = ExportedGenerator.read(generator, "AtoB")
    next(iter(exported.state_dict.values())).view(-1)[0] = float("nan")
    atomic_save(exported.to_file(), generator)
    with pytest.raises(CorruptFileError, match=r"NaN or infinite values, so no exported generator can be used"):
        ExportedGenerator.read(generator, "AtoB")


def test_a_file_that_is_not_a_torch_archive_is_named_as_such_without_torchs_unsafe_advice(tmp_path):
    png = tmp_path / "AtoB.pt"
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(CorruptFileError) as error:
        ExportedGenerator.read(png, "AtoB")
    assert "is not a torch file" in str(error.value) and "weights_only" not in str(error.value)
    pickled = tmp_path / "pickled.pt"
    torch.save({"object": SimpleNamespace(a=1)}, pickled)
    with pytest.raises(CorruptFileError, match=r"holds a types.SimpleNamespace object, which unpaired does not load") as error:
        ExportedGenerator.read(pickled, "AtoB")
    assert "weights_only" not in str(error.value)
    translated = run_cli("translate", str(png), "--checkpoint", str(png), "--out", str(tmp_path / "t"))
    assert translated.returncode == 2 and "is not a torch file" in translated.stderr and "weights_only" not in translated.stderr


def test_a_corrupt_lease_is_named_and_taken_over_at_once_but_one_being_written_is_not(tmp_path):
    path = tmp_path / "lease.json"
    path.write_text('{"host": "elsewhere", "pid"')  # torn
    assert not Lease(path).is_stale(Lease(path).read_holder())  # written this instant: its writer may be finishing
    old = time.time() - 5
    os.utime(path, (old, old))
    lease = Lease(path)
    started = time.monotonic()
    with pytest.warns(Notice, match=r"lease.json is corrupt \(it names no holder\); it is taken over"):
        lease.acquire()
    try:
        assert time.monotonic() - started < 1 and lease.read_holder() == lease.holder
    finally:
        lease.release()
    path.write_text('["not", "a", "holder"]')
    os.utime(path, (old, old))
    assert RunFolder(tmp_path).is_leased() is False


def test_a_rerun_that_spells_the_output_folder_otherwise_finds_the_same_mlflow_child(tmp_path, monkeypatch):
    """A kill between creating the MLflow child and recording it in mlflow_run.json: the rerun finds the child by its
    tags, whether --out was given relative or absolute."""
    study = write_study(tmp_path / "spelt.yaml", "spelt")
    monkeypatch.chdir(tmp_path)
    assert len(study_run(study, Path("out")).done) == 1
    (link,) = (tmp_path / "out").glob("*/*/mlflow_run.json")
    link.unlink()  # as if killed before recording the child it created
    assert len(study_run(study, tmp_path / "out").skipped) == 1
    client = MlflowClient()
    experiment = client.get_experiment_by_name("spelt").experiment_id
    (child,) = client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'run'")
    assert child.info.status == "FINISHED" and child.data.tags["unpaired.folder"] == str(link.parent.resolve())
    assert child.data.tags["unpaired.host"] == socket.gethostname()


def test_epochs_mlflow_missed_are_logged_before_training_continues_so_the_history_is_in_order(tmp_path):
    """Epochs trained while tracking was away (here: off) are logged when the run resumes, not after later epochs."""
    base = merge(TWO_EPOCHS, {"train": {"epochs": 3}})
    out = tmp_path / "out"
    untracked = write_study(tmp_path / "ordered.yaml", "ordered", base=base, tracking={"enabled": False})
    assert len(study_run(untracked, out, AtStep(14, crash)).failed) == 1  # epochs 1, 2 checkpointed, then a crash
    tracked = write_study(tmp_path / "ordered.yaml", "ordered", base=base)
    assert len(study_run(tracked, out).done) == 1
    client = MlflowClient()
    (child,) = client.search_runs([client.get_experiment_by_name("ordered").experiment_id], "tags.`unpaired.role` = 'run'")
    history = client.get_metric_history(child.info.run_id, "cycle_A")
    assert [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))] == [1, 2, 3]


def test_final_generators_cut_short_or_deleted_are_exported_again_from_the_last_checkpoint(tmp_path):
    """A finished run whose generators/*.pt was cut short (a partial copy) or deleted stayed `done`: translate, score and
    the report then failed on it for good, though its last checkpoint holds the same weights."""
    base = merge(TINY_BASE, {"eval": {"metrics": ["fid"]}})
    study, out = write_study(tmp_path / "kept.yaml", "kept", base=base, tracking={"enabled": False}), tmp_path / "out"
    assert len(study_run(study, out).done) == 1
    (folder,) = out.glob("base/seed0-*")
    run = RunFolder(folder)
    exported = {direction: ExportedGenerator.read(run.generator_path(direction), direction).state_dict for direction in ("AtoB", "BtoA")}
    run.generator_path("AtoB").write_bytes(run.generator_path("AtoB").read_bytes()[:1000])
    run.generator_path("BtoA").unlink()
    planned = run_cli("plan", str(study), "--out", str(out))
    assert "done (final generator AtoB, BtoA missing or damaged: `run` exports it again from the last checkpoint)" in planned.stdout

    registry, said = Registry.from_entry_points(), []
    planned_study = load_study(study, registry)
    again = run_study(planned_study, out, registry, select_runs(planned_study, None, None), show_progress=False, announce=said.append)
    assert len(again.skipped) == 1 and not again.done and not again.failed
    checkpoint = run.latest_checkpoint()
    assert f"base seed 0: {run.generator_path('AtoB')}, {run.generator_path('BtoA')}: missing or damaged; exported again from " in said[0]
    assert f"{checkpoint.name}, the run's last checkpoint" in said[0]
    for direction, weights in exported.items():
        restored = ExportedGenerator.read(run.generator_path(direction), direction).state_dict
        assert restored.keys() == weights.keys() and all(torch.equal(restored[k], weights[k]) for k in weights)

    stored = run.read_result().metrics  # `unpaired score` restores them too, and scores the same weights
    run.generator_path("AtoB").write_bytes(run.generator_path("AtoB").read_bytes()[:1000])
    with pytest.warns(Notice, match=r"AtoB.pt: missing or damaged; exported again from epoch-0002-step-\d+\.pt, the run's last checkpoint"):
        rescored = rescore_folder(run, registry, torch.device("cpu"))
    assert rescored.values == stored

    run.generator_path("BtoA").unlink()  # with no checkpoint of the last epoch left, it says what to do, and the study goes on
    checkpoint.rename(checkpoint.with_name("epoch-0001-step-000000003.pt"))
    said.clear()
    again = run_study(planned_study, out, registry, select_runs(planned_study, None, None), show_progress=False, announce=said.append)
    assert len(again.skipped) == 1 and not again.failed and not run.generator_path("BtoA").exists()
    assert (
        f"warning: base seed 0: {run.generator_path('BtoA')}: missing or damaged, and no checkpoint of its last epoch (2) is left to export them from"
        in said[0]
    )
    assert f"move {folder} aside and run again to train it anew" in said[0]

    torn = run.latest_checkpoint().rename(checkpoint)  # the last epoch's checkpoint again, but cut short
    torn.write_bytes(torn.read_bytes()[:1000])
    said.clear()
    again = run_study(planned_study, out, registry, select_runs(planned_study, None, None), show_progress=False, announce=said.append)
    assert len(again.skipped) == 1 and not again.failed and f"missing or damaged, and {torn} is a torn torch archive" in said[0]


@pytest.mark.slow
def test_a_corrupt_study_index_leaves_compare_and_the_report_working_from_the_run_folders(make_distribution, tmp_path):
    make_distribution("pixel-features", "1.0", {"pixel": "pixel_features"}, {"pixel_features.py": PIXEL_FEATURES})
    scored = merge(TINY_BASE, {"data": {"n_test": 7}, "eval": {"metrics": ["fid"], "feature_extractor": {"name": "mean_colour"}}})
    study = write_study(
        tmp_path / "indexed.yaml", "indexed", base=scored, variants={"narrow": {}, "wide": {"generator": {"ngf": 8}}}, tracking={"enabled": False}
    )
    out = tmp_path / "out"
    assert len(study_run(study, out).done) == 2
    (out / "study.json").write_text('{"runs": [{"variant": 1}')
    compared = run_cli("compare", str(out), "--format", "json")
    assert compared.returncode == 0, compared.stderr
    assert "study.json cannot be read (it is not valid JSON:" in compared.stderr and "read from the run folders instead" in compared.stderr
    assert {row["variant"] for row in json.loads(compared.stdout)["ranking"]} == {"narrow", "wide"}
    report = run_cli("report", str(out), "--format", "markdown")
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert "read from the run folders instead" in text and "narrow" in text and "wide" in text


class SwitchableProxy(http.server.BaseHTTPRequestHandler):
    """Forwards every request to a real MLflow server until ``hang`` is set; from then on it hangs, as a server stuck on
    its database does (the connection stays open, no answer comes)."""

    upstream = ""
    hang = threading.Event()

    def forward(self):
        if self.hang.is_set() and not self.path.startswith("/health"):  # up, as its health check says, but stuck
            time.sleep(60)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = urllib.request.Request(
            self.upstream + self.path,
            data=body or None,
            method=self.command,
            headers={k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, headers, payload = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, headers, payload = error.code, error.headers, error.read()
        self.send_response(status)
        self.send_header("Content-Type", headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_tracking_server_that_hangs_mid_study_holds_each_run_up_at_most_the_tracking_timeout(mlflow_server, tmp_path, monkeypatch):
    """It hangs at the first training step: the run in training, the next run and the study's end each wait about
    tracking.timeout (2 s) for it, then tracking leaves them alone and training goes on (MLflow's own retries: minutes)."""
    for name in (
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    ):
        monkeypatch.delenv(name, raising=False)  # what the tracker sets for this test is undone after it
    SwitchableProxy.upstream, SwitchableProxy.hang = mlflow_server, threading.Event()
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SwitchableProxy)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{proxy.server_address[1]}")
    study = write_study(
        tmp_path / "hung.yaml", "hung", base=merge(TINY_BASE, {"train": {"log_every": 1}}), grid={"generator.ngf": [4, 8]}, tracking={"timeout": 2}
    )
    try:
        SwitchableProxy.hang.set()  # stuck from the start: the study stops before training, saying so
        with pytest.raises(TrackingError, match=r"answers, but not to MLflow's calls within tracking.timeout \(2 s\)"):
            study_run(study, tmp_path / "out")
        SwitchableProxy.hang.clear()
        started = time.monotonic()
        summary = study_run(study, tmp_path / "out", AtStep(1, SwitchableProxy.hang.set))
        elapsed = time.monotonic() - started
    finally:
        proxy.shutdown()
    assert len(summary.done) == 2 and not summary.failed
    assert any("MLflow tracking is incomplete for" in note for note in summary.notes)
    assert elapsed < 40, f"the hung server held the study up {elapsed:.0f} s"


def test_a_spec_with_thousands_of_problems_lists_the_first_and_a_huge_file_is_refused_before_parsing(tmp_path):
    many = tmp_path / "many.yaml"
    many.write_text(yaml.safe_dump({"name": "many", "base": {**TINY_BASE, **{f"k{i}": 1 for i in range(2000)}}}))
    started = time.monotonic()
    result = run_cli("validate", str(many))
    assert result.returncode == 2 and time.monotonic() - started < 30
    assert "2000 problems" in result.stderr and "... and 1980 more (fix these first)" in result.stderr
    assert len(result.stderr.splitlines()) < 30
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"name": "huge", "base": TINY_BASE, "description": "x" * 300_000}))
    result = run_cli("validate", str(huge))
    assert result.returncode == 2 and "is 293 KiB; a spec is at most 256 KiB" in result.stderr


def test_an_image_side_that_would_take_gigabytes_an_image_is_refused_before_any_image_is_made(tmp_path, capsys):
    """``fid --size 100000`` resized two images to 28 GiB each and was killed without a word; a spec's image side as
    large was found only by the dataset of a run."""
    folder = write_synthetic_folder(tmp_path / "images", n_train=2, n_test=2)
    for command in (["fid", str(folder / "testA"), str(folder / "testB")], ["translate", "--checkpoint", "x.pt", str(folder)]):
        with pytest.raises(SystemExit) as refused:
            main([*command, "--size", "100000"])
        assert refused.value.code == 2 and "'100000' px is more than 8192, the largest image side" in capsys.readouterr().err
    for data in ({"size": 100000}, {"name": "folder", "root": str(folder), "load_size": 100000, "crop_size": 9000}):
        study = write_study(tmp_path / "huge.yaml", "huge", merge(TINY_BASE, {"data": data}), tracking={"enabled": False})
        assert main(["validate", str(study)]) == 2
        problems = [line.strip() for line in capsys.readouterr().err.splitlines()[1:]]
        assert all(line.endswith(("less than or equal to 8192 (got 100000)", "(got 9000)")) for line in problems) and problems, problems


LAUGHS = ", ".join(
    ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]", *(f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh"))]
)
"""Eight YAML anchors of aliases in one flow list, 350 bytes: 9**8 (43 million) values once they are expanded."""


def test_small_specs_that_stand_for_billions_of_values_or_hold_themselves_are_refused_before_anything_walks_them(tmp_path, capsys):
    """Validating such a spec walked every alias wherever it appears (past 60 s and gigabytes for a 600-byte file), or
    ended in RecursionError or a circular reference: "This is a bug in unpaired"."""
    base = "base: {data: {name: synthetic, size: 32, n_train: 4, n_test: 2}, eval: {metrics: []}}"
    deep = "[" * 2000 + "]" * 2000  # too deep for a parser
    nested: dict = {"generator": {"name": "resnet"}}
    for _ in range(900):  # parsed, but too deep for what checks it
        nested = {"k": nested}
    itself = "an alias (*name) stands for a value that holds that alias itself"
    said = {
        "laughs.yaml": (f"name: laughs\n{base}\ndescription: [{LAUGHS}]\n", "its YAML aliases (*name) stand for over 1,000,000 values"),
        "itself.yaml": (f"name: itself\n{base}\ngrid: {{train.lr: &l [0.1, *l]}}\n", itself),
        "deep.yaml": (f"name: deep\n{base}\ndescription: {deep}\n", "nested more than 32 levels deep"),
        "deep.json": ('{"name": "deep", "description": ' + deep + "}", "nested more than 32 levels deep"),
        "deeper.json": (json.dumps({"name": "deep", "base": TINY_BASE, "variants": {"x": nested}}), "nested more than 32 levels deep"),
    }
    for name, (text, problem) in said.items():
        (tmp_path / name).write_text(text)
        assert main(["validate", str(tmp_path / name)]) == 2
        assert f"error: {tmp_path / name}: 1 problem:\n  " in (err := capsys.readouterr().err) and problem in err, err
    study = write_study(tmp_path / "plain.yaml", "plain")
    for value, problem in [(f"[{LAUGHS}]", "stand for over 1,000,000 values"), (deep, "nested more than 32 levels deep")]:
        assert main(["validate", str(study), f"description={value}"]) == 2  # as any override that cannot be read
        assert "error: the overrides on the command line: 1 problem:\n  description: the value is" in (err := capsys.readouterr().err)
        assert problem in err, err
    aliased = tmp_path / "aliased.yaml"  # aliases as people use them still work
    aliased.write_text(
        "name: aliased\nbase: &b {data: {name: synthetic, size: 32, n_train: 4, n_test: 2}, eval: &e {metrics: []}}\n"
        "variants: {x: {eval: *e}, y: {<<: *b, train: {lr: 0.001}}}\n"
    )
    assert main(["validate", str(aliased)]) == 0, capsys.readouterr().err


def test_a_study_is_refused_the_output_folder_of_a_study_of_another_name(tmp_path, capsys):
    """Study 'two' trained into study 'one''s folder without a word: their runs mixed, and each rewrote the index."""
    one, two = write_study(tmp_path / "one.yaml", "one"), write_study(tmp_path / "two.yaml", "two", grid={"train.lr": [1e-4, 3e-4]})
    out = tmp_path / "shared"
    assert main(["run", str(one), "--out", str(out), "--quiet", "tracking.enabled=false"]) == 0
    capsys.readouterr()
    for command in ("run", "plan"):
        assert main([command, str(two), "--out", str(out), "tracking.enabled=false"]) == 2
        expected = f"error: the output folder {out} holds the study 'one', not 'two': give this study an output folder of its own"
        assert expected in capsys.readouterr().err
    assert json.loads((out / "study.json").read_text())["name"] == "one" and [p.name for p in out.iterdir() if p.is_dir()] == ["base"]
    (out / "study.json").rename(tmp_path / "one-index.json")  # 'two' is 'one' renamed: it adopts the folder
    assert main(["plan", str(two), "--out", str(out), "tracking.enabled=false"]) == 0


def test_a_dataset_with_an_empty_split_is_refused_by_validate(make_distribution, tmp_path):
    make_distribution("broken-parts", "1.0", {"broken": "broken_parts"}, {"broken_parts.py": BROKEN_COMPONENTS})
    study = write_study(tmp_path / "empty.yaml", "empty", base={**TINY_BASE, "data": {"name": "no_test_b"}})
    result = run_cli("validate", str(study))
    assert result.returncode == 2
    assert "variant[base].data: dataset 'no_test_b' of broken-parts 1.0 has no images in testB" in result.stderr


def test_data_at_fault_is_refused_by_validate_and_data_it_cannot_open_here_only_warned_of(tmp_path):
    """A folder whose images are all unreadable was "cannot be opened here, so it was not checked", and valid."""
    unreadable = write_study(tmp_path / "unreadable.yaml", "unreadable", base={**TINY_BASE, "data": unreadable_images(tmp_path / "data")})
    refused = run_cli("validate", str(unreadable))
    assert refused.returncode == 2 and "variant[base].data: " in refused.stderr and "trainA holds no readable images" in refused.stderr


def test_networks_that_cannot_take_the_data_s_image_size_are_refused_by_validate_with_the_sizes_they_take(tmp_path):
    """``validate`` passed a 33 px crop for the ResNet (it returns 36 px images) and a 6-layer PatchGAN on 32 px
    images; every run then failed as it started, the discriminator's with a bare torch ValueError."""
    grid = {"generator.n_blocks": [1, 2], "discriminator.n_layers": [2, 6]}
    deep = run_cli("validate", str(write_study(tmp_path / "deep.yaml", "deep", grid=grid)))
    assert deep.returncode == 2 and "1 problem:" in deep.stderr, deep.stderr
    assert (
        "variant[n_blocks=1,n_layers=6].discriminator: discriminator 'patchgan' of unpaired 0.2.0 cannot take the data's 32 px "
        "images (its crop size) (ValueError: "
    ) in deep.stderr
    assert "; the nearest size this variant's networks take is 192 px (the same in variants n_blocks=2,n_layers=6)" in deep.stderr

    odd = write_study(tmp_path / "odd.yaml", "odd", base=merge(TINY_BASE, {"data": {"size": 33}}))
    refused = run_cli("validate", str(odd))
    assert (
        refused.returncode == 2
        and (
            "variant[base].generator: generator 'resnet' of unpaired 0.2.0 turns the data's 33 px images (its crop size) into "
            "36x36 px ones; the nearest size this variant's networks take is 32 or 36 px"
        )
        in refused.stderr
    )
    trained = run_cli("run", str(odd), "--out", str(tmp_path / "out"), "--quiet")  # run names it as each run starts
    assert trained.returncode == 1 and "FAILED base seed 0: ContractError: generator 'resnet' of unpaired 0.2.0 turns" in trained.stdout


def test_a_network_that_cannot_run_on_the_meta_device_is_left_to_the_check_on_the_run_s_device():
    """The size check works out shapes on the meta device; a plugin that needs values there fails at every size, which
    says nothing about the data's: the contract check on the run's own device tells what is wrong with it, if anything."""
    from unpaired.training.contracts import size_problem

    class NeedsValues(torch.nn.Module):
        def forward(self, images):
            return images * float(images.mean())  # a value: none on the meta device

    part = SimpleNamespace(build=lambda *args: NeedsValues())
    variant = SimpleNamespace(generator=part, generator_norm=part, discriminator=part, discriminator_norm=part)
    with pytest.raises(Exception):  # noqa: B017 - whichever torch raises for a value of a meta tensor
        NeedsValues()(torch.empty(1, 3, 8, 8, device="meta"))
    assert size_problem(variant, 32) is None  # type: ignore[arg-type]


def test_the_ray_driver_names_a_run_held_by_a_silent_lease_and_when_it_is_taken_over(tmp_path, monkeypatch):
    from unpaired.execution.ray_executor import RayExecutor

    monkeypatch.setenv("UNPAIRED_LEASE_TIMEOUT", "60")
    registry = Registry.from_entry_points()
    study = load_study(write_study(tmp_path / "held.yaml", "held"), registry)
    folder = RunFolder.in_study(tmp_path, study.runs[0].variant, 0, study.runs[0].run_id)
    folder.path.mkdir(parents=True)
    folder.lease().path.write_text(json.dumps({"host": "node-7", "pid": 4242, "token": "t", "since": 0}))
    old = time.time() - 45
    os.utime(folder.lease().path, (old, old))
    said: list[str] = []
    driver = SimpleNamespace(silent_holders=set(), context=SimpleNamespace(announce=said.append))
    jobs = make_jobs(study.runs, lambda run: RunFolder.in_study(tmp_path, run.variant, run.seed, run.run_id).path, [])
    for _ in range(2):
        assert RayExecutor._watch_leases(driver, jobs) == 1  # still counted as running
    (line,) = said  # once per holder
    assert line.startswith("waiting: base seed 0 is held by pid 4242 on node-7, silent for 45 s (its node died?)")
    assert "a retry takes it over at" in line and "after 60 s of silence, UNPAIRED_LEASE_TIMEOUT" in line


def test_rescoring_and_completing_the_tracking_again_log_each_metric_once_per_step(make_distribution, tmp_path):
    make_distribution("pixel-features", "1.0", {"pixel": "pixel_features"}, {"pixel_features.py": PIXEL_FEATURES})
    scored = merge(TINY_BASE, {"data": {"n_test": 5}, "eval": {"metrics": ["fid"], "feature_extractor": {"name": "mean_colour"}}})
    out = tmp_path / "out"
    assert len(study_run(write_study(tmp_path / "once.yaml", "once", base=scored), out).done) == 1
    (link,) = out.glob("*/*/mlflow_run.json")
    link.write_text(json.dumps({**json.loads(link.read_text()), "complete": False}))  # killed after the scores were logged
    assert len(study_run(tmp_path / "once.yaml", out).skipped) == 1  # completes the tracking from the folder
    rescored = write_study(tmp_path / "once.yaml", "once", base=merge(scored, {"eval": {"metrics": ["fid", "kid"]}}))
    summary = study_run(rescored, out)
    assert len(summary.done) == 1 and not summary.failed
    client = MlflowClient()
    (child,) = client.search_runs([client.get_experiment_by_name("once").experiment_id], "tags.`unpaired.role` = 'run'")
    assert "kid_mean" in child.data.metrics and "fid_mean" in child.data.metrics
    for key in child.data.metrics:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {steps}"


def test_a_parent_shared_with_an_invocation_still_training_stays_running_until_the_last_one_ends(tmp_path):
    out = tmp_path / "out"
    other = out / "other" / "seed0-0123456789ab" / "lease.json"  # a run another invocation trains right now
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from unpaired.storage.lease import Lease; import time; Lease({str(other)!r}).acquire(); print(1, flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "1"
        study = write_study(tmp_path / "shared.yaml", "shared", base=merge(TINY_BASE, {"eval": {"metrics": []}}))
        summary = study_run(study, out)
        assert "the study's MLflow parent run stays RUNNING: another invocation still trains runs of it" in summary.notes
        client = MlflowClient()
        experiment = client.get_experiment_by_name("shared").experiment_id
        (parent,) = client.search_runs([experiment], "tags.`unpaired.role` = 'study'")
        assert parent.info.status == "RUNNING"
    finally:
        holder.kill()
        holder.wait()
    assert len(study_run(study, out).skipped) == 1  # the last invocation to end closes it
    (parent,) = client.search_runs([experiment], "tags.`unpaired.role` = 'study'")
    assert parent.info.status == "FINISHED"


def test_a_lease_whose_pid_was_reused_or_whose_taker_died_is_taken_over_at_once(tmp_path):
    """A container restarted under the same hostname runs a new process as the old holder's pid (here: this test's
    own pid, with another start): the lease is stale. A takeover marker left by a dead taker does not block either."""
    path = tmp_path / "run" / "lease.json"
    path.parent.mkdir()
    reused = {"host": socket.gethostname(), "pid": os.getpid(), "started": "another-boot:25", "token": "old", "since": 0.0}
    path.write_text(json.dumps(reused))
    lease = Lease(path)
    lease.acquire()
    assert lease.read_holder() == lease.holder and lease.holder["started"] not in (None, "another-boot:25")
    with pytest.raises(LeaseHeld):  # the same pid with its own start is the live holder
        Lease(path).acquire()
    lease.release()

    dead = subprocess.Popen(["true"])
    dead.wait()
    path.write_text(json.dumps({**reused, "pid": dead.pid, "started": None}))
    marker = path.with_name("lease.json.takeover")
    marker.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))  # a taker killed mid-takeover
    started = time.monotonic()
    taker = Lease(path)
    taker.acquire(wait=5)
    assert time.monotonic() - started < 3 and not marker.exists()
    taker.release()


def test_a_directory_named_like_the_lease_fails_that_run_with_what_to_do_and_the_others_train(tmp_path):
    study = write_study(tmp_path / "dir.yaml", "dir", base=merge(TINY_BASE, {"eval": {"metrics": []}}), seeds=[0, 1], tracking={"enabled": False})
    runs = load_study(study, Registry.from_entry_points()).runs
    (tmp_path / "out" / "base" / f"seed0-{runs[0].run_id}" / "lease.json").mkdir(parents=True)
    summary = study_run(study, tmp_path / "out")
    assert len(summary.done) == 1 and len(summary.failed) == 1
    ((_, why),) = summary.failed
    assert "lease.json is a directory, where the run's lease file goes: nobody can hold the run. Move it away" in why


SLOW_FEATURES = """
    import os, pathlib, time
    from pydantic import BaseModel
    from torch import nn
    from unpaired.plugin_api import hookimpl

    class P(BaseModel):
        pass

    class SlowColour(nn.Module):
        '''Each image's mean colour, a second a batch while $SLOW_MARK is set (touched when scoring starts).'''

        def forward(self, images):
            if images.shape[0] > 1 and os.environ.get("SLOW_MARK"):  # not the one-image probe at construction
                pathlib.Path(os.environ["SLOW_MARK"]).touch()
                time.sleep(1.0)
            return images.float().mean(dim=(2, 3)) / 255

    @hookimpl
    def unpaired_register_feature_extractors(register):
        register("slow_colour", lambda params: SlowColour(), P, "mean colour, slowly")
"""


@pytest.mark.parametrize("jobs", ["1", "2"])  # in this process; in a worker process, which hears of the signal from it
def test_ctrl_c_while_a_trained_run_is_scored_stops_within_seconds_and_the_rerun_only_scores_it(make_distribution, tmp_path, jobs):
    make_distribution("slow-features", "1.0", {"slow": "slow_features"}, {"slow_features.py": SLOW_FEATURES})
    scored = merge(TINY_BASE, {"data": {"n_test": 40}, "eval": {"metrics": ["fid"], "feature_extractor": {"name": "slow_colour"}, "batch_size": 2}})
    study = write_study(tmp_path / "slow.yaml", "slow", base=scored, tracking={"enabled": False})
    mark = tmp_path / "scoring"
    command = [UNPAIRED, "run", str(study), "--out", str(tmp_path / "out"), "--jobs", jobs]
    started = subprocess.Popen(
        command, env={**os.environ, "SLOW_MARK": str(mark)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while not mark.exists() and started.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists(), started.communicate()
    os.killpg(started.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole process group
    asked = time.monotonic()
    _, stderr = started.communicate(timeout=120)
    assert time.monotonic() - asked < 10, f"scoring went on {time.monotonic() - asked:.0f} s after Ctrl-C"
    assert started.returncode == 130, stderr
    plan = run_cli("plan", str(study), "--out", str(tmp_path / "out"))
    assert " rescore " in plan.stdout, plan.stdout  # trained to the end: only its scores are missing
    rerun = run_cli("run", str(study), "--out", str(tmp_path / "out"))
    assert rerun.returncode == 0, rerun.stderr
    assert "rescored: base seed 0" in rerun.stdout + rerun.stderr and "done 1 (1 of them scored again, not trained)" in rerun.stdout


def test_ctrl_c_while_the_command_imports_torch_exits_130_with_one_line(tmp_path):
    """A Ctrl-C in the seconds before a command's own signal handling printed a 30-line KeyboardInterrupt traceback."""
    command = subprocess.Popen([UNPAIRED, "report", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{command.pid}/maps")
    deadline = time.monotonic() + 60
    while "libtorch" not in maps.read_text() and time.monotonic() < deadline:  # torch is being imported
        time.sleep(0.01)
    command.send_signal(signal.SIGINT)
    _, stderr = command.communicate(timeout=60)
    assert command.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().startswith("interrupted:")


def test_plan_marks_a_queued_cpu_run_whose_thread_count_differs_from_a_finished_seeds(tmp_path, monkeypatch):
    """A run queued under --jobs 2 trains with fewer threads than one under --jobs 1, and its numbers differ: a study mixed
    them without a word."""
    cores = os.cpu_count() or 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores))  # one run uses every core, whatever share of them the tests have
    study, out = write_study(tmp_path / "study.yaml", "threads", seeds=[0, 1]), ["--out", str(tmp_path / "out")]
    assert run_cli("run", str(study), "--seeds", "0", "--jobs", "1", *out).returncode == 0
    result = next((tmp_path / "out").glob("base/seed0-*")) / "result.json"
    used = json.loads(result.read_text())["threads"]

    def queued(*args: str) -> str:
        rows = run_cli("plan", str(study), *out, *args).stdout.splitlines()
        assert rows[1].split()[:2] == ["base", "0"] and " done " in rows[1]
        return rows[2]

    assert queued().split()[4:] == ["pending", "(base)"]  # the same thread count: nothing to say
    in_workers = max(1, cores // 2)
    assert used == cores
    if cores > 1:
        assert f"pending ({in_workers} CPU thread{'s' * (in_workers > 1)} with --jobs 2; seed 0 used {used})" in queued("--jobs", "2")
    result.write_text(result.read_text().replace(f'"threads": {used}', f'"threads": {used + 6}'))  # trained elsewhere
    assert f"with --jobs 1; seed 0 used {used + 6})" in queued()


@pytest.mark.slow
def test_compare_names_the_runs_that_trained_or_were_scored_on_other_images_than_the_rest(make_distribution, tmp_path):
    """A dataset edited between the runs of a study (an image added to trainA before seed 1 trained, a test image replaced
    before seed 0 was scored again) was compared as if every run had seen the same images."""
    make_distribution("pixel-features", "1.0", {"pixel": "pixel_features"}, {"pixel_features.py": PIXEL_FEATURES})
    root = write_synthetic_folder(tmp_path / "data", n_train=3, n_test=3)
    base = merge(
        TINY_BASE,
        {
            "data": {"name": "folder", "root": str(root), "load_size": None, "crop_size": 32},
            "eval": {"metrics": ["fid"], "feature_extractor": {"name": "mean_colour"}},
        },
    )
    study = write_study(tmp_path / "drift.yaml", "drift", base=base, seeds=[0, 1], tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
    out = tmp_path / "out"
    registry = Registry.from_entry_points()
    planned = load_study(study, registry)
    assert len(run_study(planned, out, registry, select_runs(planned, None, [0]), show_progress=False, announce=lambda _: None).done) == 1
    (root / "trainA" / "extra.png").write_bytes((root / "trainB" / "00000.png").read_bytes())
    assert len(study_run(study, out).done) == 1  # seed 1, on four training images of A
    compared = run_cli("compare", str(out))
    assert compared.returncode == 0, compared.stderr
    caution = "Caution: the seeds of a variant did not all train on the same images (base: base seed 0; base seed 1: 2 different sets)"
    assert caution in " ".join(compared.stdout.split())
    assert "scored on other test images" not in compared.stdout
    tracked = run_cli("compare", str(study))  # the same, read from its MLflow runs
    assert tracked.returncode == 0 and caution in " ".join(tracked.stdout.split()), tracked.stderr

    (root / "testB" / "00001.png").write_bytes((root / "testA" / "00001.png").read_bytes())
    (seed0,) = (out / "base").glob("seed0-*")
    scored = run_cli("score", str(seed0))
    assert scored.returncode == 0 and "note: MLflow still holds the earlier scores: the study's next `unpaired run` logs these" in scored.stderr
    rows = {line.split()[1]: line for line in run_cli("plan", str(study), "--out", str(out)).stdout.splitlines() if line.startswith("base ")}
    note = "done (scored on other test images than the data holds now: `unpaired score` scores it again)"
    assert note in rows["1"] and "other test images" not in rows["0"], rows
    assert "(trained on other images than the data holds now: move its folder aside for `run` to train it again)" in rows["0"]
    assert "trained on other images" not in rows["1"]
    caution = "Caution: the runs were not all scored on the same test images (base seed 0; base seed 1: 2 different sets)"
    compared = " ".join(run_cli("compare", str(out)).stdout.split())
    assert caution in compared and "`unpaired score` on the study scores every run again" in compared
    assert caution not in " ".join(run_cli("compare", str(study)).stdout.split())  # MLflow: the scores before
    assert study_run(study, out).done == []  # nothing to train: the tracker logs seed 0's new scores
    assert caution in " ".join(run_cli("compare", str(study)).stdout.split())

    moved = tmp_path / "moved"  # the same files elsewhere, written anew: the same images
    shutil.copytree(root, moved)
    data = {name: registry.build("dataset", {"name": "folder", "root": str(folder)}) for name, folder in (("here", root), ("moved", moved))}
    assert fingerprints(data["here"], "train") == fingerprints(data["moved"], "train")
    assert fingerprints(data["here"], "test") == fingerprints(data["moved"], "test")


def test_a_run_resumed_after_its_training_images_changed_says_so_and_records_neither_set_alone(tmp_path):
    root = write_synthetic_folder(tmp_path / "data", n_train=3, n_test=2)
    base = merge(TWO_EPOCHS, {"data": {"name": "folder", "root": str(root), "load_size": None, "crop_size": 32}})
    study = write_study(tmp_path / "edited.yaml", "edited", base=base, tracking={"enabled": False})
    out = tmp_path / "out"
    before = fingerprints(Registry.from_entry_points().build("dataset", base["data"]), "train")
    assert len(study_run(study, out, AtStep(5, crash)).failed) == 1  # epoch 1 (3 steps) checkpointed, then a crash
    (root / "trainA" / "00001.png").write_bytes((root / "trainB" / "00001.png").read_bytes())
    after = fingerprints(Registry.from_entry_points().build("dataset", base["data"]), "train")
    with pytest.warns(Notice, match=r"the training images \(trainA\) changed since this run's last checkpoint: it goes on with them"):
        assert len(study_run(study, out).done) == 1
    (folder,) = out.glob("base/seed0-*")
    recorded = RunFolder(folder).read_result().train_data
    assert recorded["B"] == before["B"] == after["B"] and recorded["A"] not in (before["A"], after["A"])
