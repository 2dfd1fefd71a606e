"""Studies: expansion into runs, validation of every problem at once, plan, run, resume after kill -9."""

from __future__ import annotations

import contextlib
import json
import re
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
import torch
import yaml

from conftest import REPO, TINY_BASE, UNPAIRED, run_cli, unreadable_images, write_study
from unpaired.cli import main
from unpaired.results.time_left import RunSoFar, time_left_line
from unpaired.training.progress import duration
from unpaired.config.spec import SpecError
from unpaired.errors import UsageError
from unpaired.config.overrides import merge
from unpaired.config.study import axis_labels, load_study, plan_study
from unpaired.plugin_api.registry import Registry
from unpaired.storage.run_folder import RunFolder


def study(registry, **fields):
    return plan_study({"name": "s", "base": TINY_BASE, **fields}, registry, source="s.yaml")


def problems(registry, **fields) -> dict[str, str]:
    with pytest.raises(SpecError) as error:
        study(registry, **fields)
    return dict(error.value.problems)


def test_grid_and_named_variants_expand_into_readable_runs(registry):
    planned = study(
        registry,
        grid={"generator.n_blocks": [1, 2], "discriminator.name": ["patchgan", "pooled"]},
        variants={"plain": {}, "no-idt": {"loss_weights": {"identity": 0.0}}},
        seeds=[0, 3],
    )
    assert planned.variant_names == [
        "plain,n_blocks=1,discriminator=patchgan",
        "plain,n_blocks=1,discriminator=pooled",
        "plain,n_blocks=2,discriminator=patchgan",
        "plain,n_blocks=2,discriminator=pooled",
        "no-idt,n_blocks=1,discriminator=patchgan",
        "no-idt,n_blocks=1,discriminator=pooled",
        "no-idt,n_blocks=2,discriminator=patchgan",
        "no-idt,n_blocks=2,discriminator=pooled",
    ]
    assert len(planned.runs) == 16 and [r.seed for r in planned.runs[:2]] == [0, 3]
    last = planned.runs[-1]
    assert last.overrides == {"loss_weights.identity": 0.0, "generator.n_blocks": 2, "discriminator.name": "pooled"}
    assert last.resolved.loss_weights.as_dict() == {"name": "constant", "adversarial": 1.0, "cycle": 10.0, "identity": 0.0}
    assert last.resolved.discriminator.as_dict() == {"name": "pooled", "ndf": 4, "n_layers": 2}
    assert last.resolved.train.seed == 3
    assert len({r.run_id for r in planned.runs}) == 16
    assert len({r.variant_key for r in planned.runs}) == 8
    assert planned.baseline == "plain,n_blocks=1,discriminator=patchgan"  # the base's own configuration


def test_grid_values_of_one_component_each_name_their_own_variant(registry):
    """Two datasets of one component were both named ``data=synthetic``: one variant of two configurations, which compare
    would have pooled as seeds of one."""
    data = [{**TINY_BASE["data"], "n_train": n} for n in (6, 8)]
    planned = study(registry, grid={"data": data, "generator": [{"name": "resnet", "n_blocks": 1}, {"name": "resnet", "n_blocks": 2}]})
    assert planned.variant_names == [
        "data=synthetic(n_train=6),generator=resnet(n_blocks=1)",
        "data=synthetic(n_train=6),generator=resnet(n_blocks=2)",
        "data=synthetic(n_train=8),generator=resnet(n_blocks=1)",
        "data=synthetic(n_train=8),generator=resnet(n_blocks=2)",
    ]
    assert study(registry, grid={"data": data[:1]}).variant_names == ["data=synthetic"]  # alone on its axis, by its name
    assert axis_labels([{"name": "x"}, {"name": "x", "a": 1}, "x", 1, "1"]) == ["x()", "x(a=1)", "x", "1", '"1"']


def test_ids_are_stable_for_the_same_file(registry, tmp_path):
    """The same study gives the same ids in YAML or JSON, today and on any machine: the ids below were
    computed once and must only change when what a run trains changes (then old results are not reused)."""
    text = yaml.safe_dump({"name": "s", "base": TINY_BASE, "grid": {"train.lr": [1e-4, 2e-4]}, "seeds": [0, 1]})
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.json").write_text(json.dumps(yaml.safe_load(text)))
    first, second = load_study(tmp_path / "a.yaml", registry), load_study(tmp_path / "b.json", registry)
    assert (
        [(r.variant_key, r.run_id) for r in first.runs]
        == [(r.variant_key, r.run_id) for r in second.runs]
        == [
            ("cdd89620b06c", "45c4b0f3ac4d"),
            ("cdd89620b06c", "7c572a5402be"),
            ("ad6813aec35a", "3bb257ea837d"),
            ("ad6813aec35a", "1d4a52c63936"),
        ]
    )


def test_renaming_a_component_keeps_only_the_parameters_the_new_one_has(registry):
    base = {"image_pool": {"name": "history", "size": 50}, "generator": {"name": "resnet", "ngf": 8}, "discriminator": {"name": "patchgan", "ndf": 8}}
    changes = {"image_pool": {"name": "none"}, "generator": {"n_blocks": 6}, "discriminator": {"name": "pooled", "n_layers": 2}}
    assert merge(base, changes, registry) == {
        "image_pool": {"name": "none"},
        "generator": {"name": "resnet", "ngf": 8, "n_blocks": 6},
        "discriminator": {"name": "pooled", "ndf": 8, "n_layers": 2},
    }


def test_baseline_defaults_to_the_base_and_must_name_a_variant(registry):
    assert study(registry, grid={"generator.n_blocks": [2, 1]}).baseline == "n_blocks=1"
    assert study(registry, grid={"generator.n_blocks": [2, 1]}, baseline="n_blocks=2").baseline == "n_blocks=2"
    assert "no variant named 'n_blocks=3'" in problems(registry, grid={"generator.n_blocks": [2, 1]}, baseline="n_blocks=3")["baseline"]


def test_spec_level_problems_are_reported_together(registry):
    found = problems(registry, seed=[1], grid={"generator.n_blocks": []}, seeds=[-1, 1.5, "2"])
    assert found["seed"].startswith("unknown key; did you mean 'seeds'?")
    assert found["grid.generator.n_blocks"].startswith("List should have at least 1 item")
    assert "greater than or equal to 0 (got -1)" in found["seeds.0"]
    assert "valid integer" in found["seeds.1"] and "valid integer" in found["seeds.2"]


def test_grid_paths_must_exist_in_the_variant_schema(registry):
    found = problems(registry, grid={"generater.n_blocks": [1], "generator.n_blcks": [1], "train.learning_rate": [1e-4]})
    assert found["grid.generater.n_blocks"].startswith("no field 'generater' in a variant")
    assert found["grid.generator.n_blcks"] == "generator 'resnet' has no parameter 'n_blcks'; it has n_blocks, ngf, dropout, padding"
    assert found["grid.train.learning_rate"].startswith("no field 'learning_rate' in train")


def test_base_grid_and_variant_problems_are_reported_together(registry):
    found = problems(registry, base={**TINY_BASE, "generator": {"name": "resnet", "ngf": 0}}, grid={"generator.n_blcks": [1]}, seeds=[0, 0])
    assert set(found) == {"base.generator.ngf", "grid.generator.n_blcks", "seeds"}
    found = problems(registry, grid={"generator.n_blcks": [1], "generator.n_blocks": [0]}, variants={"odd": {"discriminator": {"name": "patchgn"}}})
    assert "has no parameter 'n_blcks'" in found["grid.generator.n_blcks"]  # a bad path no longer hides a bad value
    assert "greater than or equal to 1 (got 0)" in found["variant[odd,n_blocks=0].generator.n_blocks"]
    assert "Did you mean 'patchgan'?" in found["variant[odd,n_blocks=0].discriminator.name"]


def test_a_grid_that_explodes_is_counted_and_refused_before_any_variant_is_built(registry, tmp_path):
    """19 two-value axes are 524,288 variants: validate ran for minutes and took gigabytes building them."""
    grid = {f"train.{field}": [1, 2] for field in ("epochs", "decay_epochs", "batch_size", "log_every", "sample_every")}
    grid |= {f"generator.{field}": [1, 2] for field in ("n_blocks", "ngf")} | {"train.lr": [1e-4, 2e-4], "train.init_gain": [0.01, 0.02]}
    grid |= {"discriminator.ndf": [4, 8], "discriminator.n_layers": [1, 2], "train.init": ["normal", "xavier"], "train.seed": [0, 1]}
    grid |= {"loss_weights.cycle": [5.0, 10.0], "loss_weights.identity": [0.0, 5.0], "loss_weights.adversarial": [0.5, 1.0]}
    grid |= {"image_pool.size": [0, 50], "image_pool.swap_probability": [0.25, 0.5], "samples": [1, 2]}
    assert len(grid) == 19
    started = time.monotonic()
    result = run_cli("validate", str(write_study(tmp_path / "huge.yaml", "huge", grid=grid)))
    assert result.returncode == 2 and time.monotonic() - started < 30
    assert "grid: 524,288 variants (2 train.epochs x 2 train.decay_epochs x" in result.stderr
    assert "is more than max_variants 10,000; set it higher" in result.stderr
    small = {"generator.n_blocks": [1, 2], "generator.ngf": [4, 8]}
    named = {"a": {}, "b": {"samples": 2}}
    with pytest.raises(SpecError, match=r"8 variants \(2 generator.n_blocks x 2 generator.ngf x 2 named\) is more than max_variants 7"):
        plan_study({"name": "s", "base": TINY_BASE, "grid": small, "variants": named, "max_variants": 7}, registry)
    assert len(plan_study({"name": "s", "base": TINY_BASE, "grid": small, "variants": named, "max_variants": 8}, registry).runs) == 8


def test_a_variant_name_too_long_for_a_folder_is_a_problem_of_validation_not_a_crash_of_run(registry):
    long = "lr=" + "1" * 300
    with pytest.raises(SpecError, match=rf"variants.{long}: the variant's name is 303 characters, and a folder's at most 255"):
        plan_study({"name": "s", "base": TINY_BASE, "variants": {long: {"samples": 2}, "short": {}}}, registry)


def test_variant_problems_name_the_variant_and_the_path(registry):
    found = problems(registry, variants={"odd": {"discriminator": {"name": "patchgn"}}, "neg": {"train": {"lr": -1}}})
    assert "Did you mean 'patchgan'?" in found["variants.odd.discriminator.name"]
    assert "greater than 0 (got -1)" in found["variants.neg.train.lr"]
    huge = problems(registry, variants={"huge": {"train": {"lr": 1e300}}})["variants.huge.train.lr"]  # torch failed mid-step
    assert huge == "at most 3.4e+38: Adam steps in float32, which holds no larger number (got 1e+300)"
    gain = problems(registry, variants={"huge": {"train": {"init_gain": 1e300}}})["variants.huge.train.init_gain"]  # infinite weights
    assert gain == "at most 3.4e+38: the weights it scales are float32, which holds no larger number (got 1e+300)"
    assert "got 'many'" in problems(registry, grid={"generator.n_blocks": ["many"]})["variant[n_blocks=many].generator.n_blocks"]
    too_big = "Input should be less than or equal to 4294967295 (got 4294967296)"  # NumPy's largest seed: runs failed on it
    assert problems(registry, seeds=[0, 2**32])["seeds.1"] == too_big
    endless = problems(registry, tracking={"timeout": 1e300})["tracking.timeout"]  # "This is a bug": an OverflowError at the health check
    assert endless == "Input should be less than or equal to 3600 (got 1e+300)"
    typo = problems(registry, tracking={"metric": "fid_maen"})["tracking.metric"]  # was taken: compare then had nothing to rank by
    assert typo == "'fid_maen' is not a score of any variant; the scores all variants have: none (eval.metrics scores nothing)"
    assert problems(registry, variants={"big": {"train": {"seed": 2**32}}})["variants.big.train.seed"] == too_big


def test_two_variants_with_one_configuration_are_refused(registry):
    found = problems(registry, variants={"a": {}, "b": {"generator": {"n_blocks": 1}}}, seeds=[0, 0])
    assert found["seeds"] == "each seed may appear once (got [0, 0])"
    assert found["variants.b"].startswith("resolves to the same configuration as variant 'a'")  # reported together
    found = problems(registry, variants={"a": {}, "b": {"generator": {"n_blocks": 1}}})
    assert found["variants.b"].startswith("resolves to the same configuration as variant 'a'")


def test_duplicate_variant_names_and_syntax_errors_are_caught_in_the_file(registry, tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: s\nbase: {data: {name: synthetic}}\nvariants:\n  a: {}\n  a: {train: {seed: 1}}\n")
    with pytest.raises(SpecError, match=r"duplicate key 'a'"):
        load_study(path, registry)
    path.write_text("name: s\nbase: &b {data: {name: synthetic}, train: &t {epochs: 1}}\nvariants: {a: {train: {<<: *t, epochs: 2}}}\n")
    assert load_study(path, registry).runs[0].resolved.train.epochs == 2  # a merge key, and the key it merges set again
    path.write_text("name: s\nbase: {data: {name: synthetic}\n")
    result = run_cli("validate", str(path))
    assert result.returncode == 2 and f"error: {path}:3:1: 1 problem:\n  invalid YAML" in result.stderr


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_validates_and_plans(path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("trainA", "trainB", "testA", "testB"):  # horse2zebra's layout, with two small images in each folder
        (tmp_path / "datasets" / "horse2zebra" / folder).mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (8, 8), (40 * index, 90, 200)).save(tmp_path / "datasets" / "horse2zebra" / folder / f"{index}.png")
    assert main(["validate", str(path)]) == 0
    assert "valid:" in capsys.readouterr().out
    assert main(["plan", str(path)]) == 0
    plan = capsys.readouterr().out
    assert plan.splitlines()[0].split() == ["variant", "seed", "run", "id", "steps", "status", "overrides"]
    assert "pending" in plan and f"output folder runs/{load_study(path, Registry.from_entry_points()).spec.name}" in plan
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=study.schema.json\n")
    assert "# Question:" in text or "# Quickstart:" in text


def test_the_committed_schema_is_current(monkeypatch):
    monkeypatch.setenv("UNPAIRED_PLUGINS", "unpaired")
    result = run_cli("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout) == json.loads((REPO / "studies" / "study.schema.json").read_text()), (
        "regenerate it: UNPAIRED_PLUGINS=unpaired unpaired schema > studies/study.schema.json"
    )
    schema = json.loads(result.stdout)
    generator_options = schema["$defs"]["Variant"]["properties"]["generator"]["anyOf"]
    assert {"const": "resnet"} in [o["properties"]["name"] for o in generator_options if "properties" in o]
    assert {"type": "null"} in generator_options  # left out: the default generator
    text = result.stdout  # every reference resolves (tracking's did not: editors flagged every study file)
    assert {ref.rpartition("/")[2] for ref in re.findall(r'"\$ref": "#/\$defs/([^"]+)"', text)} <= set(schema["$defs"])
    assert schema["$defs"]["TrackingConfig"]["properties"]["timeout"]["maximum"] == 3600
    jsonschema = pytest.importorskip("jsonschema")  # what an editor checks: the shipped studies pass, a bad value does not
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((REPO / "studies").glob("*.yaml")):
        assert not [error.message for error in validator.iter_errors(yaml.safe_load(path.read_text()))], path
    quickstart = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())
    assert not validator.is_valid({**quickstart, "tracking": {"timeout": 1e300}})
    assert not validator.is_valid({**quickstart, "base": {**quickstart["base"], "eval": {"metrics": ["fdi"]}}})


@pytest.mark.slow
def test_run_selection_and_a_failing_variant_does_not_stop_the_study(tmp_path):
    path = write_study(
        tmp_path / "study.yaml", "tiny", variants={"ok": {}, "broken": {"data": unreadable_images(tmp_path / "nowhere")}}, seeds=[0, 1]
    )
    result = run_cli("run", str(path), "--out", str(tmp_path / "out"), "--only", "nope")
    assert result.returncode == 1 and "no variant named 'nope' in study 'tiny'; the variants are ok, broken" in result.stderr
    result = run_cli("run", str(path), "--out", str(tmp_path / "out"), "--seeds", "0", "--quiet")
    assert result.returncode == 1
    assert "done 1, failed 1, skipped 0 (finished earlier)" in result.stdout
    assert "FAILED broken seed 0: DataError:" in result.stdout and "nowhere/trainA holds no readable images" in result.stdout
    plan = run_cli("plan", str(path), "--out", str(tmp_path / "out")).stdout
    assert [line.split()[4] for line in plan.splitlines()[1:5]] == ["done", "pending", "failed", "pending"]
    left = r"^training left: 1 run\(s\), about \d+ s summed over them \(runs trained at once overlap\), at each variant's pace over the 2 "
    assert re.search(left + r"epoch\(s\) trained so far; scoring not counted; 2 run\(s\) of unknown length not counted$", plan, re.M), plan
    again = run_cli("run", str(path), "--out", str(tmp_path / "out"), "--only", "ok", "--quiet")
    assert again.returncode == 0 and "done 1, failed 0, skipped 1 (finished earlier)" in again.stdout


def test_the_training_left_is_each_run_s_steps_at_its_variant_s_pace_so_far():
    """``plan`` said where each run stood but not how long the study had left to train."""
    row = {"epoch": 1, "lr": 2e-4, "epoch_seconds": 1.0}  # an epoch resumed halfway took less: its speed is what counts
    done = RunSoFar("a", 10000, 10, [{**row, "it_per_s": 5.0}] * 10)  # 0.2 s a step
    partial = RunSoFar("a", 10000, 10, [{**row, "it_per_s": 2.5}] * 4)  # 0.4 s a step, 6000 steps left
    pending = RunSoFar("b", 20000, 10, [])  # no epoch of its variant yet: the mean pace
    pace = (10 * 0.2 + 4 * 0.4) / 14
    assert duration((6000 + 20000) * pace) == "1 h 51 min"
    assert time_left_line([done, partial, pending]) == (
        "training left: 2 run(s), about 1 h 51 min summed over them (runs trained at once overlap), at each variant's pace "
        "over the 14 epoch(s) trained so far (b, with none yet: the mean pace); scoring not counted"
    )
    assert time_left_line([pending]) is None and time_left_line([done]) is None  # nothing to go by; nothing left


@pytest.mark.slow
def test_parallel_jobs_train_every_run_and_track_it_from_the_workers(tmp_path):
    from mlflow.tracking import MlflowClient

    path = write_study(tmp_path / "study.yaml", "parallel", grid={"generator.n_blocks": [1, 2]})
    result = run_cli("run", str(path), "--out", str(tmp_path / "out"), "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert "done 2, failed 0" in result.stdout
    told = re.findall(r"^(n_blocks=\d seed 0): epoch (\d)/2, step \d+/\d+, [\d.]+ it/s, .+ left; lr=\S+ .*cycle_A=", result.stderr, re.M)
    assert sorted(told) == [(f"n_blocks={n} seed 0", str(epoch)) for n in (1, 2) for epoch in (1, 2)]  # a line per epoch, no bars
    assert "\r" not in result.stderr
    counted = re.findall(r"^runs: (\d)/2 ended \((\d) trained, 0 failed\), (\d) running, 0 waiting$", result.stderr, re.M)
    assert counted == [("1", "1", "1"), ("2", "2", "0")]  # as Ray's driver counts them
    index = json.loads((tmp_path / "out" / "study.json").read_text())
    for run in index["runs"]:
        assert json.loads((tmp_path / "out" / run["folder"] / "result.json").read_text())["status"] == "finished"
    client = MlflowClient()  # the tracker followed the runs into the worker processes
    experiment = client.get_experiment_by_name("parallel").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'study'")
    children = client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'run'")
    assert sorted(c.data.tags["unpaired.run_id"] for c in children) == sorted(run["run_id"] for run in index["runs"])
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert [m.step for m in client.get_metric_history(child.info.run_id, "cycle_A")] == [1, 2]
    assert parent.info.status == "FINISHED"


def final_weights(folder: Path) -> dict:
    return RunFolder(folder).load_checkpoint().model["networks"]


def quickstart_copy(tmp_path: Path) -> Path:
    """studies/quickstart.yaml, shrunk to CI size (smaller data and fewer epochs)."""
    spec = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())
    spec["base"]["data"].update(size=32, n_train=6, n_test=4)
    spec["base"]["train"].update(epochs=2, decay_epochs=1, checkpoint_every=1)
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def timeless_history(folder: Path) -> list[dict]:
    """A run's history without its timings (which differ between any two runs)."""
    return [{k: v for k, v in row.items() if k not in ("epoch_seconds", "it_per_s")} for row in json.loads((folder / "history.json").read_text())]


def progress_of(out: Path) -> set[tuple[str, int]]:
    """What a study has written so far: each lease, history, checkpoint and result file with its modification time."""
    patterns = ("*/*/lease.json", "*/*/history.json", "*/*/checkpoints/*.pt", "*/*/result.json")
    found = set()
    for pattern in patterns:
        for path in out.glob(pattern):
            with contextlib.suppress(FileNotFoundError):  # replaced or released between listing and stat
                found.add((str(path), path.stat().st_mtime_ns))
    return found


def wait_for_progress(out: Path, process: subprocess.Popen, moments: random.Random) -> bool:
    """Wait until the study writes something new (a run taken up, an epoch, a checkpoint, a result), then a random
    0-4 s more: a moment in loading, training, a write or scoring, however fast the machine. False when it ended first."""
    before, deadline = progress_of(out), time.monotonic() + 300
    while process.poll() is None and progress_of(out) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(moments.uniform(0, 4))
    return process.poll() is None


@pytest.mark.slow
def test_quickstart_killed_at_random_moments_then_rerun_equals_an_uninterrupted_study(tmp_path, monkeypatch):
    """SIGKILL to the whole process group at 5 random moments, each a little after the study wrote something (with
    --jobs 1 and 2 alternately: while loading, training, writing a checkpoint, scoring FID, between runs), then one more
    run: the same weights and histories as an uninterrupted study. One thread everywhere, since a CPU run's numbers
    depend on it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = quickstart_copy(tmp_path)
    reference = run_cli("run", str(path), "--out", str(tmp_path / "straight"), "--quiet", "--jobs", "2")
    assert reference.returncode == 0, reference.stderr
    assert "done 4, failed 0, skipped 0" in reference.stdout

    out, moments, kills = tmp_path / "killed", random.Random(0), 0
    for attempt in range(10):
        process = subprocess.Popen(
            [UNPAIRED, "run", str(path), "--out", str(out), "--quiet", "--jobs", str(1 + attempt % 2)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if wait_for_progress(out, process, moments):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
        if kills == 5:
            break
    finished_before = len(list(out.glob("*/*/result.json")))
    assert kills == 5 and finished_before < 4, "the kills came too late to interrupt anything"

    rerun = run_cli("run", str(path), "--out", str(out), "--quiet", "--jobs", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {finished_before}" in rerun.stdout
    index = json.loads((out / "study.json").read_text())
    assert len(index["runs"]) == 4
    assert sorted(p.parent.name for p in out.glob("*/*/result.json")) == sorted(r["folder"].split("/")[1] for r in index["runs"])
    for run in index["runs"]:
        straight, resumed = tmp_path / "straight" / run["folder"], out / run["folder"]
        a, b = final_weights(straight), final_weights(resumed)
        assert all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n]), run["folder"]
        assert timeless_history(straight) == timeless_history(resumed)
        result = lambda folder: json.loads((folder / "result.json").read_text())  # noqa: E731
        assert result(straight)["metrics"] == result(resumed)["metrics"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient()  # one MLflow child per run, FINISHED, each epoch logged once, whatever the kills did
    experiment = client.get_experiment_by_name("quickstart").experiment_id
    children = [
        c
        for c in client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'run'")
        if c.data.tags["unpaired.folder"].startswith(str(out.resolve()))
    ]
    assert sorted(c.data.tags["unpaired.run_id"] for c in children) == sorted(r["run_id"] for r in index["runs"])
    for child in children:
        assert child.info.status == "FINISHED" and [m.step for m in client.get_metric_history(child.info.run_id, "cycle_A")] == [1, 2, 3]


def test_command_line_overrides_give_the_study_and_run_ids_of_the_same_yaml_edit(registry, tmp_path):
    from unpaired.config.command_line import split_override

    study = write_study(tmp_path / "study.yaml", "over", grid={"train.lr": [1e-4, 2e-4]}, seeds=[0, 1])
    overridden = load_study(study, registry, ["train.epochs=3", "generator.ngf=4,6", "seeds=[0]", "discriminator.name=pooled"])
    edited = write_study(
        tmp_path / "edited.yaml",
        "over",
        merge(TINY_BASE, {"train": {"epochs": 3}, "discriminator": {**TINY_BASE["discriminator"], "name": "pooled"}}),  # the edit of the file
        grid={"train.lr": [1e-4, 2e-4], "generator.ngf": [4, 6]},
        seeds=[0],
    )
    expected = load_study(edited, registry)
    assert [(r.variant, r.seed, r.run_id) for r in overridden.runs] == [(r.variant, r.seed, r.run_id) for r in expected.runs]
    assert len(overridden.runs) == 4 and overridden.spec == expected.spec
    assert overridden.runs[0].resolved.discriminator.params.ndf == 4  # the renamed component keeps what it shares
    assert [r.variant for r in load_study(study, registry, ["train.lr=5e-4"]).runs] == ["base", "base"]  # a value replaces the axis

    assert split_override("train.lr=2e-4") == ("train.lr", [2e-4])
    assert split_override("x=true") == ("x", [True]) and split_override("x=[a, b]") == ("x", [["a", "b"]])
    assert split_override("x='a,b'") == ("x", ["a,b"]) and split_override("x=6,9") == ("x", [6, 9])
    for bad in ("train.epochs", "=5", "x=[1"):
        with pytest.raises(UsageError):
            split_override(bad)

    planned = run_cli("plan", str(study), "train.epochs=3", "--out", "o", "generator.ngf=4,6", "seeds=[0]", "discriminator.name=pooled", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert all(run.run_id in planned.stdout for run in expected.runs)
    refused = run_cli("validate", str(study), "train.epoch=3", cwd=tmp_path)
    assert refused.returncode == 2 and "base.train.epoch: unknown key; did you mean 'epochs'?" in refused.stderr
    unreadable = run_cli("validate", str(study), "train.epochs=[", "nonsense", "base.train.lr=1", "train.lr=1e-3", cwd=tmp_path)
    assert unreadable.returncode == 2, unreadable.stderr  # as a problem of the file would: every one at once
    assert unreadable.stderr.splitlines()[:4] == [
        "error: the overrides on the command line: 3 problems:",
        "  'train.epochs=[': the value is not YAML (while parsing a flow node)",
        "  'nonsense' is not an override: write KEY=VALUE (train.epochs=5) or KEY=A,B for a grid axis (generator.n_blocks=6,9)",
        "  'base.train.lr=1': name the field itself (train.epochs=5 sets the base; generator.n_blocks=6,9 adds a grid axis)",
    ]


def test_train_takes_overrides_of_its_one_variant_and_refuses_a_grid(registry, tmp_path):
    from unpaired.config.resolved import load_variant, resolve_variant

    spec = tmp_path / "variant.yaml"
    spec.write_text(yaml.safe_dump(TINY_BASE))
    overridden = load_variant(spec, registry, ["train.epochs=3", "generator.ngf=6"])
    assert overridden.run_id == resolve_variant(merge(TINY_BASE, {"train": {"epochs": 3}, "generator": {"ngf": 6}}), registry).run_id
    with pytest.raises(SpecError, match="one variant has no grid axis"):
        load_variant(spec, registry, ["generator.ngf=4,6"])


def test_validate_lists_the_base_grid_variant_and_data_problems_of_one_file_in_one_run(tmp_path):
    (tmp_path / "datasets" / "h2z" / "trainA").mkdir(parents=True)  # only one of its four folders
    study = tmp_path / "broken.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "broken",
                "base": merge(TINY_BASE, {"data": {"name": "folder", "root": "datasets/h2z"}, "generator": {"n_blockz": 2}, "train": {"epochs": -1}}),
                "grid": {"discriminator.ndff": [4, 8], "generator.ngf": [4, "wide"]},
                "seeds": [0],
            }
        )
    )
    result = run_cli("validate", "broken.yaml", cwd=tmp_path)  # a relative data root: relative to the working directory
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "error: broken.yaml: 5 problems:"
    assert lines[1:] == [
        "  base.train.epochs: Input should be greater than or equal to 0 (got -1)",
        "  base.generator.n_blockz: unknown key; did you mean 'n_blocks'? Known: n_blocks, ngf, dropout, padding.",
        f"  base.data.root: datasets/h2z (that is {tmp_path.resolve()}/datasets/h2z: relative to {tmp_path.resolve()}) has no trainB, "
        "testA, testB; a folder dataset needs trainA, trainB, testA and testB in it",
        "  grid.discriminator.ndff: discriminator 'patchgan' has no parameter 'ndff'; it has ndf, n_layers",
        "  variant[ngf=wide].generator.ngf: Input should be a valid integer, unable to parse string as an integer (got 'wide')",
    ]
    compared = run_cli("compare", "broken.yaml", cwd=tmp_path)  # reading results needs no data: only the spec's problems
    assert "base.data.root" not in compared.stderr and "base.train.epochs" in compared.stderr


def test_the_shell_completes_commands_and_their_options():
    def complete(line: str) -> list[str]:  # what bash's completion asks argcomplete, through the real console script
        env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)), "_ARGCOMPLETE_IFS": " "}
        done = subprocess.run(["bash", "-c", f"{UNPAIRED} 8>&1 9>/dev/null"], env=env, capture_output=True, text=True, timeout=60)
        return done.stdout.split()

    assert complete("unpaired comp") == ["compare"]
    assert complete("unpaired compare runs/x --f") == ["--format"]
    assert set(complete("unpaired report runs/x --")) >= {"--images", "--seed", "--metric", "--format"}
    assert complete("unpaired run s.yaml --jo") == ["--jobs"]  # an option of the installed executors


def test_only_running_a_command_imports_torch_so_help_version_and_completion_answer_at_once():
    probe = "import sys\nfrom unpaired.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"

    def imports_torch(*args: str) -> bool:
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        return done.stdout.splitlines()[-1] == "True"

    assert not imports_torch("--version") and not imports_torch("--help") and not imports_torch("compare", "--help")
    assert imports_torch("run", "--help")  # its executor options come from the plugins
    assert imports_torch("plugins")


@pytest.mark.parametrize(
    ("command", "required"),
    [(["run"], "study"), (["validate"], "study"), (["plan"], "study"), (["train"], "spec, --out"), (["data", "export"], "dataset, out")],
)
def test_a_command_without_its_arguments_names_only_the_required_ones(capsys, command, required):
    """``unpaired run`` alone said "the following arguments are required: study, KEY=VALUE": the overrides are optional."""
    with pytest.raises(SystemExit) as exited:
        main(command)
    assert exited.value.code == 2 and capsys.readouterr().err.endswith(f"error: the following arguments are required: {required}\n")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--bogus"], "unrecognized arguments: --bogus; a COMMAND is required"),
        ([], "the following arguments are required: COMMAND"),
        (["--bogus", "plan", "x.yaml"], "unrecognized arguments: --bogus"),
    ],
)
def test_an_unknown_option_is_named_whether_or_not_a_command_follows(capsys, argv, said):
    """``unpaired --bogus`` said only that COMMAND was missing."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and capsys.readouterr().err.endswith(f"error: {said}\n")


def test_every_argument_of_every_command_says_what_it_takes():
    """``unpaired fid --help`` listed its two folders, and ``score`` its target, with no word on what they are."""
    import argparse

    from unpaired.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    silent = [
        f"{parser.prog} {action.dest}"
        for parser in parsers(build_parser("run"))
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction)
    ]
    assert silent == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_validate_warns_of_a_device_this_machine_lacks_where_run_would_stop(tmp_path):
    """``validate`` said a study on ``train.device: cuda`` was valid on a machine where ``run`` then stopped at once."""
    study = write_study(tmp_path / "gpu.yaml", "gpu", base=merge(TINY_BASE, {"train": {"device": "cuda"}}))
    checked = run_cli("validate", str(study))
    assert checked.returncode == 0 and "valid: 1 variant(s)" in checked.stdout
    assert (
        "warning: train.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu': `unpaired run` on this machine would stop" in checked.stderr
    )


def test_validate_notes_an_eval_every_that_scores_no_epoch_before_the_last(tmp_path, capsys):
    """``eval.every: 10`` on 4-epoch runs recorded ``fid_mean_best`` (best epoch 4) as if epochs had been compared."""
    base = merge(TINY_BASE, {"eval": {"metrics": ["fid"], "every": 2}})  # TINY_BASE trains 2 epochs
    study = write_study(tmp_path / "every.yaml", "every", base=base, grid={"train.epochs": [1, 3]})
    assert main(["validate", str(study)]) == 0
    note = (
        "note: in epochs=1, eval.every is not below the epochs a run trains: no epoch before the last is scored, so the best "
        "epoch is the last and fid_mean_best the final score; lower eval.every to choose among epochs\n"
    )
    assert capsys.readouterr().err == note  # the 4-epoch variant compares epochs 2 and 4: no note for it


def test_report_refuses_test_image_indices_that_are_not_a_list_of_distinct_whole_numbers(capsys):
    for images, why in [("0,5,0", "'0,5,0' names test image 0 more than once"), ("0,x", "'0,x' is not a list of test image indices like 0,5,9")]:
        with pytest.raises(SystemExit) as stopped:
            main(["report", "runs/x", "--images", images])
        assert stopped.value.code == 2 and f"argument --images: {why}" in capsys.readouterr().err
