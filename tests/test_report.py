"""The study report: its statistics are scipy's, and a real study's report holds what a paper needs, offline."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from scipy import stats

from conftest import PIXEL_FEATURES, TINY_BASE, UNPAIRED, unreadable_images, write_distribution
from unpaired.config.overrides import merge
from unpaired.plugin_api.data import to_uint8
from unpaired.plugin_api.registry import Registry
from unpaired.reporting.figures import LABEL_WIDTH, MIN_SIDE, PADDING
from unpaired.results.statistics import bonferroni, summarize
from unpaired.storage.files import CorruptFileError
from unpaired.storage.run_folder import RunFolder
from unpaired.training.samples import showcase_indices


BASELINE, BETTER, SAME, SINGLE = [30.1, 31.5, 29.8], [26.0, 26.5, 25.9], [30.5, 29.9, 31.0], [20.0]


def table_of(values: dict[str, list[float]]) -> pd.DataFrame:
    runs = pd.DataFrame(
        [{"variant": v, "seed": s, "run_id": f"{v}{s}", "planned_seeds": 3, "fid_mean": x} for v, xs in values.items() for s, x in enumerate(xs)]
    )
    return summarize(runs, "fid_mean", "base", lower_better=True)


def test_intervals_p_values_and_verdicts_are_scipys():
    table = table_of({"base": BASELINE, "better": BETTER, "same": SAME, "single": SINGLE})
    for name, values in {"base": BASELINE, "better": BETTER, "same": SAME}.items():
        low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / len(values), scale=stats.sem(values))
        assert (table.loc[name, "ci_low"], table.loc[name, "ci_high"]) == pytest.approx((low, high))
    tests = {name: stats.ttest_ind(values, BASELINE, equal_var=False) for name, values in {"better": BETTER, "same": SAME}.items()}
    for name, test in tests.items():  # Bonferroni over the two variants that could be tested: p x 2, intervals at 97.5 %
        interval = test.confidence_interval(1 - 0.05 / 2)
        assert table.loc[name, "p_value"] == pytest.approx(test.pvalue) and table.loc[name, "p_adjusted"] == pytest.approx(min(1, 2 * test.pvalue))
        assert (table.loc[name, "delta_ci_low"], table.loc[name, "delta_ci_high"]) == pytest.approx((interval.low, interval.high))
        assert (table.loc[name, "delta_ci_high"] < 0) == (table.loc[name, "p_adjusted"] < 0.05)  # the interval agrees with the p-value
    assert table.loc["better", "verdict"] == "better"
    assert table.loc["same", "verdict"] == "not distinguishable from the baseline at n = 3"
    assert table.loc["single", "verdict"] == "too few seeds to test (n = 1 vs 3)" and math.isnan(table.loc["single", "p_value"])
    assert table.loc["base", "verdict"] == "baseline" and list(table.index[:2]) == ["single", "better"]  # ranked, lower first


def test_figures_draw_any_variant_name_as_written_and_tell_names_apart():
    """A variant named '$\\frac{$' failed the report (matplotlib read it as mathtext), and two named in Chinese were drawn
    as the same empty boxes in every figure, with a Python warning per character."""
    import warnings

    from unpaired.reporting.figures import image_grid
    from unpaired.results.compare import plot
    from unpaired.results.drawing import drawable

    assert drawable("λ=5, $x$ é") == "λ=5, $x$ é" and drawable("名前") == "\\u540d\\u524d" != drawable("名字")
    values = {"$\\frac{$": BASELINE, "名前": BETTER, "名字": SAME}
    table = table_of({"base": BASELINE, **values})
    runs = pd.DataFrame([{"variant": v, "fid_mean": x} for v, xs in {"base": BASELINE, **values}.items() for x in xs])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        buffer = io.BytesIO()
        plot(table, runs, "fid_mean", buffer)
        grid = image_grid([("input (A)", torch.zeros(2, 3, 32, 32, dtype=torch.uint8)), *((name, None) for name in values)], 32)
    assert Image.open(buffer).size[0] > 0 and Image.open(io.BytesIO(grid)).size[0] > 0


def test_text_columns_line_up_on_a_terminal_with_wide_and_combining_characters():
    """compare's table and plan padded by code points, so a column after a Chinese variant name started two cells late
    per character, and one after a name with a combining accent one cell early."""
    from unpaired.columns import aligned, display_width

    rows = [["variant", "FID", "verdict"], ["名前", "41.2", "better"], ["e\u0301te\u0301", "44.0", ""], ["baseline", "40.9", "baseline"]]
    lines = aligned(rows)
    assert [display_width(line[: line.index(row[1])]) for line, row in zip(lines, rows)] == [10] * 4
    assert lines[2] == "e\u0301te\u0301" + " " * 7 + "44.0" and display_width("名前") == 4


def test_the_curves_of_a_one_epoch_study_are_ticked_at_whole_epochs():
    from unpaired.reporting.figures import label_epochs
    from unpaired.results.drawing import pyplot

    with pyplot() as plt:
        figure, axis = plt.subplots()
        axis.plot([1], [3.0])
        label_epochs(axis)
        figure.canvas.draw()
        low, high = axis.get_xlim()
        shown = [tick for tick in axis.get_xticks() if low <= tick <= high]
        plt.close(figure)
    assert shown == [1.0]


def test_bonferroni_adjustment_matches_the_textbook():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "bonferroni")
    assert bonferroni([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.04, 0.16, 0.12, 0.02])
    adjusted = bonferroni([0.2, math.nan, 0.9])
    assert adjusted[0] == pytest.approx(0.4) and math.isnan(adjusted[1]) and adjusted[2] == 1.0


QUESTION = "Do two residual blocks beat one?"
N_TEST = 7


def cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([UNPAIRED, *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 2-variant x 3-seed study, scored every epoch, trained and tracked in its own MLflow store."""
    root = tmp_path_factory.mktemp("report-study")
    site = root / "site"
    write_distribution(site, "pixel-features", "1.0", {"pixel": "pixel_features"}, {"pixel_features.py": PIXEL_FEATURES})
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    base = merge(
        TINY_BASE,
        {"data": {"n_train": 4, "n_test": N_TEST}, "eval": {"metrics": ["fid", "kid"], "every": 1, "feature_extractor": {"name": "mean_colour"}}},
    )
    study = root / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "report-study",
                "question": QUESTION,
                "description": "Generator depth, tiny.",
                "base": base,
                "grid": {"generator.n_blocks": [1, 2]},
                "seeds": [0, 1, 2],
                "tracking": {"uri": f"sqlite:///{root}/mlflow.db"},
            }
        )
    )
    result = cli(env, "run", str(study), "--quiet", "--jobs", "2", cwd=root)  # into its default output folder
    assert result.returncode == 0, result.stderr
    return {"root": root, "study": study, "out": root / "runs" / "report-study", "env": env, "run": result}


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs))


@pytest.mark.slow
def test_the_run_writes_an_offline_html_report_whose_images_are_embedded_pngs_of_their_stated_size(finished):
    html = (finished["out"] / "report.html").read_text()
    assert "report: runs/report-study/report.html" in finished["run"].stderr
    parser = Images()
    parser.feed(html)
    assert "script" not in parser.tags and "http://" not in html and "https://" not in html  # nothing to fetch, nothing to run
    assert [image["data-name"] for image in parser.images] == ["metric", "curves", "translations-AtoB", "translations-BtoA"]
    for image in parser.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        picture = Image.open(io.BytesIO(base64.b64decode(image["src"][len(prefix) :])))
        assert picture.format == "PNG" and picture.size == (int(image["width"]), int(image["height"]))
    order = [
        QUESTION,
        "6 planned: 6 finished",
        "Answer",
        "Ranked by FID, final generators",
        "KID, final generators",
        "FID, best epoch",
        "Every run",
        "Size and compute per variant",
        "Training curves",
        "Visual comparison",
        "What each variant changes",
    ]
    positions = [html.index(text) for text in order]
    assert positions == sorted(positions)
    assert "generator.n_blocks</td><td>1</td><td>2" in html and "Failed and incomplete" not in html


@pytest.mark.slow
def test_the_tables_are_compares_and_the_markdown_report_has_its_pictures_beside_it(finished):
    env, out = finished["env"], finished["out"]
    markdown = cli(env, "report", str(out), "--format", "markdown")
    assert markdown.returncode == 0, markdown.stderr
    text = (out / "report.md").read_text()
    from_mlflow = cli(env, "compare", str(finished["study"]), "--format", "markdown")
    assert from_mlflow.returncode == 0, from_mlflow.stderr
    for line in from_mlflow.stdout.splitlines():  # the same rows, from the same code, whether MLflow or the folders
        assert line in text
    from_folders = json.loads(cli(env, "compare", str(out), "--format", "json").stdout)
    assert from_folders == json.loads(cli(env, "compare", str(finished["study"]), "--format", "json").stdout)
    ranking = from_folders["ranking"]
    assert {row["n"] for row in ranking} == {3} and all(0 <= row["p_value"] <= 1 for row in ranking if not row["baseline"])
    assert [row["seed"] for row in from_folders["tables"]["Every run"]] == ["0", "1", "2"] * 2  # its MLflow run id from either
    typo = cli(env, "report", str(out), "--metric", "fid_maen")
    assert typo.returncode == 1 and "no metric 'fid_maen' in the finished runs; available: fid_a2b" in typo.stderr
    assert "seed 7 is not one of the study's seeds (0, 1, 2)" in cli(env, "report", str(out), "--seed", "7").stderr
    for name in ("metric", "curves", "translations-AtoB", "translations-BtoA"):
        assert f"(report_files/{name}.png)" in text and Image.open(out / "report_files" / f"{name}.png").format == "PNG"


@pytest.mark.slow
def test_the_visual_comparison_shows_the_real_inputs_then_one_column_per_variant(finished):
    registry = Registry.from_entry_points()
    data = registry.build("dataset", {"name": "synthetic", "size": 32, "n_train": 4, "n_test": N_TEST})
    shown = showcase_indices(N_TEST)
    assert shown == [0, 1, 2, 4, 5, 6]
    assert f"A → B: test images {', '.join(map(str, shown))} of {N_TEST}" in (finished["out"] / "report.html").read_text()
    assert cli(finished["env"], "report", str(finished["out"]), "--format", "markdown").returncode == 0
    figure = Image.open(finished["out"] / "report_files" / "translations-AtoB.png").convert("RGB")
    side = 32 * -(-MIN_SIDE // 32)  # enlarged to at least MIN_SIDE
    cell = max(side, LABEL_WIDTH)
    assert figure.width == PADDING + 3 * (cell + PADDING)  # inputs, n_blocks=1, n_blocks=2
    bottom = figure.height - PADDING - side
    (folder,) = [p.parent for p in (finished["out"] / "n_blocks=1").glob("seed0-*/result.json")]
    showcase, crops = torch.load(folder / "showcase.pt"), []
    for row, index in enumerate(reversed(shown)):
        top, left = bottom - row * (side + PADDING), PADDING + (cell - side) // 2
        real = to_uint8(data.test_image("A", index)).permute(1, 2, 0).numpy()
        expected = Image.fromarray(real).resize((side, side), Image.NEAREST)
        assert (np.asarray(figure.crop((left, top, left + side, top + side))) == np.asarray(expected)).all()
        translated = figure.crop((left + cell + PADDING, top, left + cell + PADDING + side, top + side))
        saved = showcase["AtoB"]["images"][len(shown) - 1 - row].permute(1, 2, 0).numpy()  # what the run saved when it ended
        assert (np.asarray(translated) == np.asarray(Image.fromarray(saved).resize((side, side), Image.NEAREST))).all()
        crops.append(np.asarray(translated, dtype=int))

    (folder / "showcase.pt").unlink()  # without it, the generators are rebuilt and give the same pictures
    assert cli(finished["env"], "report", str(finished["out"]), "--format", "markdown").returncode == 0
    figure = Image.open(finished["out"] / "report_files" / "translations-AtoB.png").convert("RGB")
    for row, crop in enumerate(crops):
        top, left = bottom - row * (side + PADDING), PADDING + (cell - side) // 2 + cell + PADDING
        assert np.abs(np.asarray(figure.crop((left, top, left + side, top + side)), dtype=int) - crop).max() <= 1


@pytest.mark.slow  # the trained study it reads
def test_the_report_needs_only_the_run_folders(finished):
    if not (finished["out"] / "report.md").is_file():  # no test before this one asked for it
        assert cli(finished["env"], "report", str(finished["out"]), "--format", "markdown").returncode == 0
    before = (finished["out"] / "report.md").read_text().splitlines()
    store = finished["root"] / "mlflow.db"
    store.rename(store.with_suffix(".away"))  # the MLflow store is gone (until the end of this test, which others share)
    try:
        again = cli(finished["env"], "report", "report-study", "--format", "markdown", cwd=finished["root"])  # by its name
    finally:
        store.with_suffix(".away").rename(store)
    assert again.returncode == 0, again.stderr
    after = (finished["out"] / "report.md").read_text().splitlines()
    assert [line for line in after if "generated" not in line] == [line for line in before if "generated" not in line]


@pytest.mark.slow  # the trained study it reads
def test_the_fid_curve_ends_with_the_final_generators_score(finished):
    from unpaired.reporting.figures import _history
    from unpaired.results.study_results import read_study_results

    for run in read_study_results(finished["out"]).runs:
        history = _history(run)
        assert list(history["epoch"]) == [1, 2] and history["fid_mean"].notna().all()
        assert history["fid_mean"].iloc[-1] == run.result.metrics["fid_mean"]


@pytest.mark.slow  # the trained study it reads
def test_a_stop_signal_during_the_report_skips_rebuilding_generators(finished, monkeypatch):
    import unpaired.reporting.comparison as comparison
    from unpaired.results.study_results import read_study_results

    for showcase in finished["out"].glob("*/*/showcase.pt"):  # as for runs trained before showcases were saved
        showcase.unlink()
    monkeypatch.setattr(comparison, "stop_requested", lambda: 2)  # Ctrl-C arrived at the end of `unpaired run`
    shown = comparison.visual_comparison(read_study_results(finished["out"]), Registry.from_entry_points(), 0, torch.device("cpu"))
    assert shown.missing == [f"{v} (not translated: a stop was requested)" for v in ("n_blocks=1", "n_blocks=2")]


@pytest.mark.slow
def test_a_partial_study_with_a_failed_run_says_what_is_missing(tmp_path):
    study = tmp_path / "partial.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "partial",
                "base": TINY_BASE,
                "seeds": [0, 1],
                "baseline": "ok",
                "tracking": {"enabled": False},
                "variants": {"ok": {}, "broken": {"data": unreadable_images(tmp_path / "nowhere")}},
            }
        )
    )
    env, out = {**os.environ}, tmp_path / "runs" / "partial"
    run = cli(env, "run", str(study), "--seeds", "0", "--quiet", cwd=tmp_path)  # into runs/partial
    assert run.returncode == 1 and "done 1, failed 1" in run.stdout, run.stderr
    html = (out / "report.html").read_text()
    assert "2 planned" not in html and "4 planned: 1 finished, 1 failed, 2 pending" in html
    assert "Incomplete: ok: 1 of 2 seeds finished (seed 1 pending)" in html
    assert "Incomplete: broken: 0 of 2 seeds finished (seed 0 failed, seed 1 pending)" in html
    assert "nowhere/trainA holds no readable images" in html
    assert "No finished run has a score yet (eval.metrics: [] switches scoring off)." in html
    assert "No final generators of seed 0 to show (grey): broken (not finished)." in html
    compared = cli(env, "compare", str(study), "--metric", "cycle_A", cwd=tmp_path)  # tracking is off: its run folders
    assert compared.returncode == 1 and "no metric 'cycle_A' in the finished runs; available: none" in compared.stderr
    assert "note: no finished run yet, so not compared: broken (1 failed, 1 pending); `unpaired plan` shows where" in compared.stderr
    nowhere = cli(env, "report", str(tmp_path / "nowhere"))
    assert nowhere.returncode == 2 and "no study output folder there" in nowhere.stderr

    (ok,) = (out / "ok").glob("seed0-*")  # a hostile edit: what cannot be read is said, the rest still shown
    (ok / "history.json").write_text("{ not json")
    (ok / "result.json").write_text("garbage")
    again = cli(env, "report", str(out))
    assert again.returncode == 0, again.stderr
    html = (out / "report.html").read_text()
    assert "Unreadable, so counted as not finished: " in html and "result.json is not valid JSON" in html
    assert "4 planned: 1 failed, 1 partial, 2 pending" in html and "Training curves" not in html
    assert f"Left out of the training curves: {ok / 'history.json'} is not valid JSON" in html
    (ok / "history.json").write_text('{"epoch": 1}')  # JSON, but not rows
    with pytest.raises(CorruptFileError, match="history.json is not a training history"):
        RunFolder(ok).read_history()
