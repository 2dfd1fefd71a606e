"""What the numbers answer: a planted effect in one axis of a stored 2 x 2 study is named, and nothing else is."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import TINY_BASE
from unpaired.results.same_data import data_cautions
from unpaired.results.scores import describe_scores, metric_title
from unpaired.cli import main
from unpaired.config.study import plan_study
from unpaired.plugin_api.registry import Registry
from unpaired.reporting import write_report
from unpaired.results.analysis import POWER, analyse, seeds_needed
from unpaired.results.statistics import mean_interval
from unpaired.results.study_folder import run_folder, write_index
from unpaired.plugin_api.lifecycle import RunResult, Scoring
from unpaired_plugins.metrics import FID, FidParams

NOISE = [0.9, -1.2, 0.4, -0.1]  # per seed: the same in every cell, as if the seed drew easier or harder test images
DEEP = "generator.n_blocks"
WIDE = "discriminator.n_layers"


def stored_study(tmp_path, registry: Registry, grid: dict | None = None, better_when=lambda overrides: overrides[DEEP] == 2, **spec):
    """A 2 x 2 study (4 seeds) whose results are written as if trained: a deeper generator lowers FID by 8, the
    discriminator's depth changes nothing, and there is no interaction (or another ``grid`` where the runs whose
    overrides are ``better_when`` have an FID lower by 8)."""
    study = plan_study(
        {
            "name": "planted",
            "question": "Which axis matters?",
            "base": TINY_BASE,
            "grid": grid or {DEEP: [1, 2], WIDE: [1, 2]},
            "seeds": [0, 1, 2, 3],
            "tracking": {"enabled": False},
            **spec,
        },
        registry,
    )
    out, rng = tmp_path / "out", np.random.default_rng(7)
    write_index(study, out, {})
    better = {"fid_a2b": True, "fid_b2a": True, "fid_mean": True}
    for run in study.runs:
        fid = 50.0 - 8.0 * better_when(run.overrides) + NOISE[run.seed] + rng.normal(0, 0.5)
        scores = {"fid_a2b": fid - 1, "fid_b2a": fid + 1, "fid_mean": fid}
        folder = run_folder(out, run)
        folder.path.mkdir(parents=True)
        scoring = Scoring(
            identity="stored",
            extractor="inception",
            lower_is_better=better,
            test_images={"A": 30, "B": 40},
            labels=dict.fromkeys(better, "FID"),
            from_features=dict.fromkeys(better, True),
            caveats=[FID(FidParams()).caveat(30)],  # as FID says of 30 images
        )
        result = RunResult(status="finished", run_id=run.run_id, epochs=2, steps=12, seconds=6.0, metrics=scores, scoring=scoring)
        folder.write_result(result.model_copy(update={"parameters": {"G_AtoB": 2300, "G_BtoA": 2300, "D_A": 900, "D_B": 900}}))
    return study, out


def test_a_planted_effect_in_one_axis_is_named_with_its_size_and_no_interaction(tmp_path, capsys):
    registry = Registry.from_entry_points()
    study, out = stored_study(tmp_path, registry)
    assert main(["compare", str(out), "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    terms = {row["term"]: row for row in printed["factorial"]}
    assert list(terms) == [DEEP, WIDE, f"{DEEP} × {WIDE}"]
    assert terms[DEEP]["p"] < 0.001 and terms[WIDE]["p"] > 0.05 and terms[f"{DEEP} × {WIDE}"]["p"] > 0.05
    answer = " ".join(printed["answer"])
    assert f"Axis {DEEP} changes fid_mean" in answer and f"Axis {WIDE} has no effect detectable at this number of seeds" in answer
    assert f"The interaction {DEEP} × {WIDE} is not detectable" in answer and "interact (" not in answer
    assert "n_blocks=2,n_layers=1 is better than the baseline" in answer and "n_blocks=2,n_layers=2 is better than the baseline" in answer
    assert "baseline n_blocks=1,n_layers=2 at" in answer  # the base's values: 1 block, 2 layers
    assert "n_blocks=1,n_layers=1 (Δ" in answer and "cannot be told apart from the baseline" in answer
    assert "from 30 test images (the smallest direction), fewer than 2048" in answer

    # the ANOVA's numbers, by hand for a balanced 2 x 2 design: sums of squares of the cell means and within the cells
    y = {(run.overrides[DEEP], run.overrides[WIDE], run.seed): None for run in study.runs}
    runs = pd.DataFrame(printed["tables"]["Every run"])
    for _, row in runs.iterrows():
        deep, wide = (int(part.split("=")[1]) for part in row["variant"].split(","))
        y[(deep, wide, int(row["seed"]))] = float(row["fid_a2b"]) + 1
    cells = np.array([[[y[(d, w, s)] for s in range(4)] for w in (1, 2)] for d in (1, 2)])
    residual = ((cells - cells.mean(axis=2, keepdims=True)) ** 2).sum()
    deep_ss = 2 * 4 * ((cells.mean(axis=(1, 2)) - cells.mean()) ** 2).sum()
    f_deep = deep_ss / (residual / 12)
    assert terms[DEEP]["F"] == pytest.approx(f_deep, rel=1e-3) and terms[DEEP]["p"] == pytest.approx(stats.f.sf(f_deep, 1, 12), rel=1e-2)
    assert terms[DEEP]["partial_eta_sq"] == pytest.approx(deep_ss / (deep_ss + residual), rel=1e-3)
    assert set(runs["run folder"]) == {str(run_folder(out, run).path.relative_to(out)) for run in study.runs} and set(runs["epochs"]) == {"2"}

    # compare's Markdown is what the report says, line for line
    assert main(["compare", str(out), "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out
    report = write_report(out, registry, fmt="markdown", metric="fid_mean").read_text()
    assert all(line in report.splitlines() for line in markdown.splitlines())
    assert "| n_blocks=1,n_layers=1 | 6.4 k | G_AtoB 2.3 k, G_BtoA 2.3 k, D_A 900, D_B 900 | 6 s (12 steps, 0.500 s/step) |  |" in report


def test_a_grid_over_configurations_of_one_component_analyses_each_configuration_as_its_own_level(tmp_path, capsys):
    """Two patchgans apart only in depth are two levels of the discriminator axis, named as the variants name them."""
    shallow, deep = ({"name": "patchgan", "ndf": 4, "n_layers": depth} for depth in (1, 2))
    grid = {"discriminator": [shallow, deep], DEEP: [1, 2]}
    stored_study(tmp_path, Registry.from_entry_points(), grid, better_when=lambda overrides: overrides["discriminator"]["n_layers"] == 2)
    assert main(["compare", str(tmp_path / "out"), "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    terms = {row["term"]: row for row in printed["factorial"]}
    assert list(terms) == ["discriminator", DEEP, f"discriminator × {DEEP}"]
    assert terms["discriminator"]["p"] < 0.001 and terms[DEEP]["p"] > 0.05
    means = dict(level.split(": ") for level in terms["discriminator"]["means"].split(", "))
    assert list(means) == ["patchgan(n_layers=1)", "patchgan(n_layers=2)"]  # the labels of the variants' names
    assert float(means["patchgan(n_layers=1)"]) - float(means["patchgan(n_layers=2)"]) == pytest.approx(8, abs=1)


def test_markdown_shows_names_and_words_that_look_like_html_as_text(tmp_path, capsys):
    """A variant named like markup, and a question holding a script, stay text in the Markdown of compare and the
    report: any renderer would otherwise run them."""
    hostile, question = "<img src=x onerror=alert(1)>", "Does <script>alert(1)</script> matter?"
    grid = {DEEP: [1, 2]}
    variants = {hostile: {"discriminator": {"n_layers": 1}}}
    stored_study(tmp_path, Registry.from_entry_points(), grid, lambda overrides: overrides[DEEP] == 2, variants=variants, question=question)
    assert main(["compare", str(tmp_path / "out"), "--format", "markdown"]) == 0
    compared = capsys.readouterr().out
    report = write_report(tmp_path / "out", Registry.from_entry_points(), fmt="markdown", metric="fid_mean").read_text()
    for markdown in (compared, report):
        assert "<img" not in markdown and "<script>" not in markdown
        assert "&lt;img src=x onerror=alert(1)&gt;,n_blocks=2" in markdown
    assert "*Does &lt;script&gt;alert(1)&lt;/script&gt; matter?*" in report


def test_seeds_needed_give_80_percent_power_and_one_fewer_does_not():
    values, baseline = [10.0, 11.2, 9.6], [11.0, 12.1, 10.4]
    n = seeds_needed(values, baseline, alpha=0.05)
    d = abs(np.mean(values) - np.mean(baseline)) / math.sqrt((np.var(values, ddof=1) + np.var(baseline, ddof=1)) / 2)

    def power(k: int) -> float:  # two-sided two-sample t-test, k per group: scipy's noncentral t
        df, shift = 2 * k - 2, d * math.sqrt(k / 2)
        critical = stats.t.ppf(1 - 0.025, df)
        return stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift)

    assert n is not None and power(n) >= POWER > power(n - 1)
    assert seeds_needed([1.0, 1.0], [1.0, 1.0], 0.05) is None and seeds_needed([1.0], [2.0, 3.0], 0.05) is None


def test_the_answer_says_when_two_scores_disagree_on_the_best_variant():
    scores = {  # variant -> (FID, KID) per seed: FID ranks a first, KID b
        "base": [(30.0, 0.05), (31.0, 0.06), (29.5, 0.05)],
        "a": [(25.0, 0.07), (26.0, 0.08), (25.5, 0.07)],
        "b": [(28.0, 0.02), (27.5, 0.02), (28.5, 0.03)],
    }
    runs = pd.DataFrame(
        [
            {"variant": v, "seed": s, "run_id": f"{v}{s}", "planned_seeds": 3, "fid_mean": f, "kid_mean": k}
            for v, pairs in scores.items()
            for s, (f, k) in enumerate(pairs)
        ]
    )
    kid = analyse(runs, "kid_mean", "base", lower_better=True).table
    answer = analyse(runs, "fid_mean", "base", lower_better=True, others={"kid_mean": kid}).answer
    assert "kid_mean ranks b first where fid_mean ranks a first: the two scores disagree on the best variant." in answer
    assert answer[0].startswith("Ranked by fid_mean (lower is better), each variant against the baseline base at α = 0.05, p-values and intervals")


def test_data_cautions_name_the_runs_apart_from_the_set_most_runs_share_and_the_variants_scored_on_other_test_images():
    old, new, other = {"A": "a1", "B": "b1"}, {"A": "a2", "B": "b1"}, {"A": "a3", "B": "b3"}
    names = [f"{variant} seed {seed}" for variant in ("raw", "clean") for seed in range(3)]
    variants = ["raw"] * 3 + ["clean"] * 3
    train = [old, old, new, other, other, other]  # "clean" trains on other data by design; raw's seed 2 after an edit
    test = [old, old, old, old, {}, new]  # clean seed 1 was scored before hashes were recorded: not counted
    trained, scored = data_cautions(names, variants, train, test)
    assert "did not all train on the same images (raw: raw seed 0 and raw seed 1; raw seed 2: 2 different sets)" in trained
    assert "not all scored on the same test images (clean seed 2; the other 4 runs: 2 different sets)" in scored
    assert data_cautions(names, variants, [old] * 6, [{}] * 6) == []

    # each variant scored on its own test images, as a grid over data.size does: no rescoring makes them compare
    (apart,) = data_cautions(names, variants, [old] * 6, [old, old, {}, other, other, other])
    assert apart.startswith("Caution: the variants were not all scored on the same test images (raw; clean: 2 different sets)")
    assert "mix a variant's setting with its test images" in apart and "by design" in apart


def test_variants_scored_with_different_feature_extractors_are_cautioned_that_their_scores_do_not_compare():
    def scoring(extractor: str) -> Scoring:
        return Scoring(identity=extractor, extractor=extractor, lower_is_better={"fid_mean": True}, from_features={"fid_mean": True})

    variants = ["base", "base", "wide", "wide"]
    runs = pd.DataFrame({"variant": variants, "seed": [0, 1, 0, 1], "fid_mean": [50.0, 51.0, 9.0, 9.5]})
    (caution,) = describe_scores(runs, [scoring("inception"), None, scoring("dino"), scoring("dino")], [{}] * 4).attrs["caveats"]
    assert caution.startswith("Caution: the scores from features come from different feature extractors (inception: base; dino: wide)")
    same = describe_scores(runs.copy(), [scoring("inception")] * 4, [{}] * 4)
    assert same.attrs["caveats"] == [] and same.attrs["extractors"] == ["inception"]


def test_a_variant_with_two_seeds_gets_a_caution_that_its_interval_spans_twelve_standard_errors():
    runs = pd.DataFrame(
        [
            {"variant": v, "seed": s, "run_id": f"{v}{s}", "planned_seeds": 3, "fid_mean": f}
            for v, fids in {"base": [30.0, 31.0, 29.0], "a": [25.0, 26.0]}.items()
            for s, f in enumerate(fids)
        ]
    )
    answer = " ".join(analyse(runs, "fid_mean", "base", lower_better=True).answer)
    assert "Caution: a has 2 scored seeds: a standard deviation of 2 values rests on one degree of freedom" in answer
    assert "95 % interval of such a mean spans ±12.7 standard errors" in answer
    low, high = mean_interval([25.0, 26.0])
    assert (high - low) / 2 == pytest.approx(12.706 * stats.sem([25.0, 26.0]), rel=1e-4)  # what the caution says
    three = runs[runs["variant"] == "base"]
    assert "scored seeds" not in " ".join(analyse(three, "fid_mean", "base", lower_better=True).answer)


def test_ranking_by_the_best_epoch_cautions_that_it_was_chosen_on_the_test_images():
    runs = pd.DataFrame(
        [
            {"variant": v, "seed": s, "run_id": f"{v}{s}", "planned_seeds": 3, "fid_mean": f + 5, "fid_mean_best": f}
            for v, values in {"base": [30.0, 31.0, 29.0], "a": [25.0, 26.0, 24.5]}.items()
            for s, f in enumerate(values)
        ]
    )
    best = " ".join(analyse(runs, "fid_mean_best", "base", lower_better=True).answer)
    assert "Caution: fid_mean_best is each run's best fid_mean over the epochs scored during training" in best
    assert "these comparisons are optimistic; fid_mean, of the final generators, is not." in best
    assert "chosen by that score" not in " ".join(analyse(runs, "fid_mean", "base", lower_better=True).answer)
    runs.attrs["labels"] = {"fid_mean": "FID"}
    assert metric_title("fid_mean_best", runs) == "FID, best epoch during training, chosen on the test images (mean of A→B and B→A)"
