"""MLflow tracking against a real server, resume into the same run, failures, and compare's statistics."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from conftest import AtStep, crash, run_cli, send_sigint, unreadable_images, write_study
from unpaired.config.overrides import merge
from unpaired.config.study import load_study
from unpaired.errors import UsageError
from unpaired.execution.runner import run_study, select_runs
from unpaired.plugin_api.registry import Registry
from unpaired.results.analysis import analyse
from unpaired.results.tables import _latex, ranking, render
from unpaired.results.statistics import summarize
from unpaired.tracking.parent import aggregate_metrics
from unpaired.tracking.store import TrackingError, log_metrics

BASE = {
    "data": {"name": "synthetic", "size": 32, "n_train": 4, "n_test": 3},
    "generator": {"name": "resnet", "n_blocks": 1, "ngf": 4},
    "discriminator": {"name": "patchgan", "ndf": 4, "n_layers": 2},
    "train": {"epochs": 1, "decay_epochs": 1, "num_workers": 0},
    "samples": 1,
}


def tracked_study(path, name, base=None, **fields):
    """A study of ``BASE`` (scored with FID: these tests check what is logged of it) changed by ``base``."""
    return write_study(path, name, merge(BASE, base or {}), **fields)


def children(client, experiment_id):
    return client.search_runs([experiment_id], filter_string="tags.`unpaired.role` = 'run'")


@pytest.mark.slow
def test_a_study_logged_to_a_real_tracking_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    study = tracked_study(tmp_path / "served.yaml", "served", variants={"ok": {}, "broken": {"data": unreadable_images(tmp_path / "nowhere")}})
    result = run_cli("run", str(study), "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 1 and "done 1, failed 1" in result.stdout, result.stderr

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("served")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`unpaired.role` = 'study'")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"  # one of its runs failed
    parent_files = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"served.yaml", "report.html"} <= parent_files  # the study report, written when the study ended

    runs = {r.data.tags["unpaired.variant"]: r for r in children(client, experiment.experiment_id)}
    ok, broken = runs["ok"], runs["broken"]
    assert ok.data.tags["mlflow.parentRunId"] == broken.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert ok.info.status == "FINISHED" and ok.data.tags["unpaired.status"] == "finished"
    assert ok.data.params["generator.n_blocks"] == "1" and ok.data.params["train.lr"] == "0.0002"
    assert ok.data.tags["unpaired.seed"] == "0" and len(ok.data.tags["unpaired.run_id"]) == 12
    assert len(ok.data.tags["unpaired.variant_key"]) == 12 and ok.data.tags["unpaired.variant_key"] != ok.data.tags["unpaired.run_id"]
    assert "unpaired 0.2.0" in ok.data.tags["unpaired.plugins"]
    assert [m.step for m in client.get_metric_history(ok.info.run_id, "cycle_A")] == [1, 2]
    assert {"fid_a2b", "fid_b2a", "fid_mean", "kid_a2b", "kid_b2a", "lr", "it_per_s"} <= set(ok.data.metrics)
    files = {a.path for a in client.list_artifacts(ok.info.run_id)}
    assert {"spec.json", "history.csv", "result.json", "samples", "generators"} <= files
    assert broken.info.status == "FAILED" and "nowhere/trainA holds no readable images" in broken.data.tags["unpaired.error"]
    compared = run_cli("compare", str(study))  # from the server: the variant without a finished run is named, not left out silently
    assert compared.returncode == 0 and "note: no finished run in MLflow yet, so not compared: broken; " in compared.stderr, compared.stderr

    again = run_cli("run", str(study), "--out", str(tmp_path / "out"), "--quiet")
    assert "done 0, failed 1, skipped 1" in again.stdout
    rerun = {r.data.tags["unpaired.variant"]: r.info.run_id for r in children(client, experiment.experiment_id)}
    assert rerun == {"ok": ok.info.run_id, "broken": broken.info.run_id}  # no new child runs: the failed one was continued


def test_an_interrupted_run_resumes_into_the_same_mlflow_run(tmp_path):
    study = load_study(
        tracked_study(tmp_path / "resumed.yaml", "resumed", base={"eval": {"metrics": []}, "train": {"epochs": 2, "log_every": 1}}),
        Registry.from_entry_points(),
    )
    out = tmp_path / "out"
    registry = Registry.from_entry_points()
    with registry.listening(AtStep(6, send_sigint)):
        summary = run_study(study, out, registry, select_runs(study, None, None), show_progress=False, announce=lambda _: None)
    assert len(summary.interrupted) == 1

    client = MlflowClient()
    experiment = client.get_experiment_by_name("resumed")
    (first,) = children(client, experiment.experiment_id)
    assert first.info.status == "KILLED"
    summary = run_study(study, out, Registry.from_entry_points(), select_runs(study, None, None), show_progress=False, announce=lambda _: None)
    assert len(summary.done) == 1
    (child,) = children(client, experiment.experiment_id)
    assert child.info.run_id == first.info.run_id and child.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "cycle_A")] == [1, 2, 3]

    summary = run_study(study, out, Registry.from_entry_points(), select_runs(study, None, None), show_progress=False, announce=lambda _: None)
    assert len(summary.skipped) == 1 and len(children(client, experiment.experiment_id)) == 1

    # deleted in MLflow's UI (or the store made anew): the folder's link said "complete", so it was never logged again
    client.delete_run(child.info.run_id)
    summary = run_study(study, out, Registry.from_entry_points(), select_runs(study, None, None), show_progress=False, announce=lambda _: None)
    (again,) = children(client, experiment.experiment_id)
    assert len(summary.skipped) == 1 and again.info.run_id != child.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(again.info.run_id, "cycle_A")] == [1, 2, 3] and again.data.metrics == child.data.metrics

    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`unpaired.role` = 'study'")
    client.delete_run(parent.info.run_id)  # the finished child was left without a parent in MLflow's UI
    run_study(study, out, Registry.from_entry_points(), select_runs(study, None, None), show_progress=False, announce=lambda _: None)
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`unpaired.role` = 'study'")
    assert client.get_run(again.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id

    client.delete_experiment(experiment.experiment_id)  # MLflow refused the study's runs, and the error said to check the URI
    with pytest.raises(TrackingError, match=rf"'resumed' \(id {experiment.experiment_id}\) at .* is deleted, and MLflow keeps its name"):
        run_study(study, out, Registry.from_entry_points(), select_runs(study, None, None), show_progress=False, announce=lambda _: None)


@pytest.mark.slow
def test_a_study_grown_by_three_invocations_has_one_parent_with_each_variants_aggregates(tmp_path):
    path = tracked_study(tmp_path / "grown.yaml", "grown", base={"eval": {"metrics": []}}, grid={"generator.n_blocks": [1]}, seeds=[0, 1])
    registry, out = Registry.from_entry_points(), tmp_path / "out"
    for overrides, seeds in [([], [0]), ([], None), (["generator.n_blocks=1,2"], None)]:  # one seed; both; a second variant
        study = load_study(path, registry, overrides)
        summary = run_study(study, out, registry, select_runs(study, None, seeds), show_progress=False, announce=lambda _: None)
        assert not summary.failed

    client = MlflowClient()
    experiment = client.get_experiment_by_name("grown")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's UI opens on the runs
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`unpaired.role` = 'study'")
    assert parent.info.status == "FINISHED" and parent.data.tags["unpaired.invocations"] == "3"
    assert parent.data.tags["unpaired.out"] == str(out.resolve())
    runs = children(client, experiment.experiment_id)
    assert sorted((r.data.tags["unpaired.variant"], r.data.tags["unpaired.seed"]) for r in runs) == [
        ("n_blocks=1", "0"),
        ("n_blocks=1", "1"),
        ("n_blocks=2", "0"),
        ("n_blocks=2", "1"),
    ]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    seconds = {r.data.tags["unpaired.variant"]: [] for r in runs}
    for r in runs:
        seconds[r.data.tags["unpaired.variant"]].append(float(r.data.tags["unpaired.training_seconds"]))
    for variant, name in (("n_blocks=1", "n_blocks_1"), ("n_blocks=2", "n_blocks_2")):
        assert parent.data.metrics[f"{name}/training_seconds_n"] == 2
        assert parent.data.metrics[f"{name}/training_seconds_mean"] == pytest.approx(sum(seconds[variant]) / 2, abs=1e-3)
    aggregates = json.loads(Path(client.download_artifacts(parent.info.run_id, "aggregates.json", str(tmp_path))).read_text())
    assert aggregates["n_blocks=2"]["training_seconds"]["n"] == 2


def test_every_variants_aggregates_are_logged_on_the_parent_under_a_name_of_its_own(tmp_path):
    """A variant named '../../evil' stopped the study's tracking (MLflow refuses a metric name that reads as a path out
    of the run), one of 250 characters made a name longer than MLflow takes, and 'a=b' and 'a,b' shared one name."""
    variants = ["../../evil", "..x", "a=b", "a,b", "v" * 255, "n_blocks=1"]
    aggregates = {variant: {"fid_mean": {"mean": float(i), "std": math.nan, "n": 1.0}} for i, variant in enumerate(variants)}
    metrics = aggregate_metrics(aggregates)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("names")).info.run_id
    log_metrics(client, run, metrics, step=0)
    logged = client.get_run(run).data.metrics
    assert sorted(value for name, value in logged.items() if name.endswith("/fid_mean_mean")) == list(range(len(variants)))
    assert logged["n_blocks_1/fid_mean_mean"] == 5 and logged["_.x/fid_mean_n"] == 1  # readable where no other shares it


def test_epochs_trained_again_after_a_crash_are_logged_once(tmp_path):
    """With checkpoint_every: 2 a crash in epoch 2 loses epoch 1; it is trained again (identically) but not logged twice."""
    base = {"eval": {"metrics": []}, "train": {"epochs": 2, "log_every": 1, "checkpoint_every": 2}}
    study = load_study(tracked_study(tmp_path / "relogged.yaml", "relogged", base=base), Registry.from_entry_points())
    registry = Registry.from_entry_points()

    def run():
        return run_study(study, tmp_path / "out", registry, select_runs(study, None, None), show_progress=False, announce=lambda _: None)

    with registry.listening(AtStep(6, crash)):
        assert len(run().failed) == 1
    client = MlflowClient()
    (child,) = children(client, client.get_experiment_by_name("relogged").experiment_id)
    first = [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "cycle_A")]
    assert [step for step, _ in first] == [1]
    assert len(run().done) == 1
    history = client.get_metric_history(child.info.run_id, "cycle_A")
    assert [m.step for m in history] == [1, 2, 3]
    assert (history[0].step, history[0].value) == first[0]


def test_an_unreachable_server_stops_the_study_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    result = run_cli("run", str(tracked_study(tmp_path / "s.yaml", "offline", base={"eval": {"metrics": []}})), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "the MLflow tracking server http://127.0.0.1:9 is unreachable" in result.stderr
    assert not (tmp_path / "out").exists()


HAND_MADE = {  # variant -> metric per seed; planned 3 seeds each
    "base": [10.0, 12.0, 14.0],  # mean 12, std 2
    "wide": [20.0, 21.0],  # mean 20.5, std 0.7071, incomplete
    "deep": [11.0, 13.0, 12.0],  # mean 12, std 1
}


def test_summary_statistics_match_a_hand_computed_example():
    runs = pd.DataFrame(
        [{"variant": v, "seed": s, "run_id": v, "planned_seeds": 3, "fid_mean": x} for v, values in HAND_MADE.items() for s, x in enumerate(values)]
    )
    table = summarize(runs, "fid_mean", baseline="base", lower_better=True)
    assert list(table.index) == ["base", "deep", "wide"]
    assert table.loc["base", "mean"] == 12.0 and table.loc["base", "std"] == pytest.approx(2.0)
    assert table.loc["wide", "mean"] == 20.5 and table.loc["wide", "std"] == pytest.approx(math.sqrt(0.5))
    assert list(table["rank"]) == [1, 1, 3]
    assert list(table["n"]) == [3, 3, 2] and list(table["complete"]) == [True, True, False]
    assert table.loc["wide", "delta"] == 8.5 and table.loc["deep", "delta"] == 0.0
    assert table.loc["wide", "verdict"] == "worse" and table.loc["deep", "verdict"] == "not distinguishable from the baseline at n = 3"
    analysis = analyse(runs, "fid_mean", "base", lower_better=True)
    tables = [ranking(analysis.table, "fid_mean", "Ranked by fid_mean")]
    text = render(analysis, tables, "table")
    assert "wide (incomplete: 2/3 seeds)" in text and "20.500 ± 0.707" in text and "+8.500 [" in text
    assert "| 1 | base (baseline) | 12.000 ± 2.000 | [7.032, 16.968] | 3 |  |  | baseline |" in render(analysis, tables, "markdown").splitlines()
    assert r"12.000 $\pm$ 2.000 & [7.032, 16.968] & 3 &  &  & baseline \\" in render(analysis, tables, "latex")
    assert r"wide (incomplete: 2/3 seeds) & 20.500 $\pm$ 0.707" in render(analysis, tables, "latex")
    assert _latex("p < 0.001 | a > b") == r"p $<$ 0.001 $|$ a $>$ b"  # OT1, LaTeX's default encoding, prints < as ¡
    with pytest.raises(UsageError, match="no metric 'fid' in the finished runs; available: fid_mean"):
        summarize(runs, "fid", baseline="base", lower_better=True)
    runs["psnr"] = runs["fid_mean"]  # a metric where higher is better ranks the other way
    assert list(summarize(runs, "psnr", baseline="base", lower_better=False)["rank"]) == [1, 2, 2]


@pytest.mark.slow
def test_compare_command_reads_the_runs_from_mlflow(tmp_path):
    client = MlflowClient()
    experiment_id = client.create_experiment("hand-made")
    parent = client.create_run(experiment_id, tags={"unpaired.role": "study", "unpaired.baseline": "base"})
    for variant, values in HAND_MADE.items():
        for seed, value in enumerate(values):
            run = client.create_run(
                experiment_id,
                tags={
                    "mlflow.parentRunId": parent.info.run_id,
                    "unpaired.variant": variant,
                    "unpaired.role": "variant" if variant == "base" else "run",  # the role 0.1 wrote, and the current one
                    "unpaired.seed": str(seed),
                    "unpaired.run_id": variant,
                    "unpaired.planned_seeds": "3",
                },
            )
            client.log_batch(run.info.run_id, metrics=[Metric("fid_mean", value, 0, 2)], tags=[RunTag("unpaired.status", "finished")])
            client.set_terminated(run.info.run_id, "FINISHED")
    unfinished = client.create_run(
        experiment_id,
        tags={"unpaired.role": "variant", "unpaired.variant": "base", "unpaired.seed": "9", "unpaired.run_id": "base", "unpaired.planned_seeds": "3"},
    )
    client.log_batch(unfinished.info.run_id, metrics=[Metric("fid_mean", 1000.0, 0, 1)])  # still running: not counted

    result = run_cli("compare", "hand-made", "--format", "json", "--plot", str(tmp_path / "plot.png"))
    assert result.returncode == 0, result.stderr
    rows = {row["variant"]: row for row in json.loads(result.stdout)["ranking"]}
    assert rows["base"]["mean"] == 12.0 and rows["base"]["baseline"] is True
    assert rows["wide"]["complete"] is False and rows["wide"]["verdict"] == "worse"
    assert rows["wide"]["p_value"] == pytest.approx(stats.ttest_ind([20.0, 21.0], [10.0, 12.0, 14.0], equal_var=False).pvalue)
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert os.path.exists(tmp_path / "plot.png")
    missing = run_cli("compare", "no-such-study")
    assert missing.returncode == 1 and "no MLflow experiment named 'no-such-study'" in missing.stderr
    client.delete_experiment(experiment_id)  # in MLflow's UI: compare read its runs as if it were there
    deleted = run_cli("compare", "hand-made")
    assert deleted.returncode == 1 and f"'hand-made' (id {experiment_id}) at sqlite:" in deleted.stderr, deleted.stderr
    assert f"is deleted, and MLflow keeps its name: restore it (`mlflow experiments restore --experiment-id {experiment_id}`" in deleted.stderr
