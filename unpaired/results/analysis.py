"""What a study's numbers answer, in words: which variants differ from the baseline and by how much, what cannot be
told at this number of seeds, and, for a grid, which axes matter and whether they interact.

``compare`` prints it and the report opens with it. The factorial analysis is statsmodels': an ordinary least-squares
model of the score over every finished run with each grid axis as a categorical factor (and their interactions when
every cell of the grid has two seeds or more), tested with a type II ANOVA; its effect size is partial
η² = SS_term / (SS_term + SS_residual). The seeds a difference needs come from statsmodels' power of the two-sample
t-test (equal n per variant; Cohen's d from the observed means and stds) at the verdict's adjusted α and 80 % power.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from unpaired.config.study import axis_labels
from unpaired.results.scores import headline
from unpaired.results.statistics import ALPHA, CONFIDENCE, summarize

POWER = 0.8
MOST_SEEDS = 1000


def grid_levels(grid: Mapping[str, Sequence[Any]], named_variants: int, runs: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, dict[str, str]]:
    """Variant -> its level of each axis of ``grid`` (axis -> its values), labelled as the variant names label it
    (``runs``: each run's variant and overrides): the factors of the factorial analysis. Empty when the study has no
    grid, or crosses it with several named variants."""
    if not grid or named_variants > 1:
        return {}
    labels = {axis: dict(zip(map(_as_json, values), axis_labels(list(values)))) for axis, values in grid.items()}
    levels = {}
    for variant, overrides in runs:
        values = {axis: _as_json(overrides.get(axis)) for axis in grid}
        levels[variant] = {axis: labels[axis].get(value, value) for axis, value in values.items()}
    return levels


def _finite(value: Any) -> bool:
    """A usable score: a NaN or infinite one is a failed scoring, left out as the ranking leaves it out."""
    return isinstance(value, float | int) and math.isfinite(value)


def _as_json(value: Any) -> str:
    """A grid value as a key that tells every value apart (two components of one name, ``1`` and ``"1"``)."""
    return json.dumps(value, sort_keys=True)


def factorial(runs: pd.DataFrame, levels: Mapping[str, Mapping[str, str]], metric: str) -> pd.DataFrame | None:
    """The ANOVA of ``metric`` over the grid's axes: one row per term (``df``, ``F``, ``p``, ``partial_eta_sq`` and,
    for an axis, the mean at each of its levels), ``attrs["df_resid"]``. None unless the finished runs cover every cell
    of two axes, or of one with three levels or more, and leave residual degrees of freedom with some spread."""
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    if not levels or metric not in runs.columns:
        return None
    data = runs[runs["variant"].isin(list(levels)) & runs[metric].map(_finite)]
    columns = {axis: [levels[variant][axis] for variant in data["variant"]] for axis in next(iter(levels.values()))}
    axes = [axis for axis, column in columns.items() if len(set(column)) > 1]
    if not axes or (len(axes) == 1 and len(set(columns[axes[0]])) == 2):
        return None  # one axis of two levels: the test against the baseline already says it all
    frame = pd.DataFrame({"y": data[metric].astype(float).to_numpy(), **{f"f{i}": columns[axis] for i, axis in enumerate(axes)}})
    cells = frame.groupby([f"f{i}" for i in range(len(axes))]).size()
    if len(cells) < math.prod(frame[f"f{i}"].nunique() for i in range(len(axes))):
        return None  # a cell without a finished run: the grid is not crossed
    joiner = " * " if cells.min() >= 2 and len(axes) > 1 else " + "
    formula = "y ~ " + joiner.join(f"C(f{i})" for i in range(len(axes)))
    model = ols(formula, data=frame).fit()
    if model.df_resid < 1 or model.ssr <= 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        anova = anova_lm(model, typ=2)
    residual = float(anova.loc["Residual", "sum_sq"])
    rows = []
    for term, row in anova.drop(index="Residual").iterrows():
        parts = [int(part.removeprefix("C(f").removesuffix(")")) for part in str(term).split(":")]
        means = "" if len(parts) > 1 else _level_means(frame, f"f{parts[0]}")
        rows.append(
            {
                "term": " × ".join(axes[i] for i in parts),
                "df": int(row["df"]),
                "F": float(row["F"]),
                "p": float(row["PR(>F)"]),
                "partial_eta_sq": float(row["sum_sq"]) / (float(row["sum_sq"]) + residual),
                "means": means,
                "interaction": len(parts) > 1,
            }
        )
    table = pd.DataFrame(rows).set_index("term")
    table.attrs["df_resid"], table.attrs["interactions"] = int(model.df_resid), joiner == " * "
    return table


def _level_means(frame: pd.DataFrame, factor: str) -> str:
    """Each level's mean over the grid's cells (each cell weighs the same, whatever its number of seeds)."""
    others = [column for column in frame.columns if column.startswith("f") and column != factor]
    cells = frame.groupby([factor, *others])["y"].mean().groupby(level=0).mean()
    return ", ".join(f"{level}: {value:.3f}" for level, value in cells.items())


def seeds_needed(values: Sequence[float], baseline: Sequence[float], alpha: float) -> int | None:
    """Seeds per variant at which a difference the size of the observed one would be detected with 80 % power at
    ``alpha``; None when it cannot be estimated (fewer than two seeds, no difference or no spread)."""
    from statsmodels.stats.power import TTestIndPower

    if len(values) < 2 or len(baseline) < 2:
        return None
    spread = math.sqrt((np.var(values, ddof=1) + np.var(baseline, ddof=1)) / 2)
    difference = abs(float(np.mean(values)) - float(np.mean(baseline)))
    if spread == 0 or difference == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            n = TTestIndPower().solve_power(effect_size=difference / spread, alpha=alpha, power=POWER, ratio=1.0)
        except (ValueError, RuntimeError):
            return MOST_SEEDS + 1
    n = float(np.asarray(n).item())
    return MOST_SEEDS + 1 if not math.isfinite(n) or n > MOST_SEEDS else max(2, math.ceil(n))


@dataclass
class Analysis:
    """A metric's comparison of the variants: the ranked table, the grid's factorial table and the answer in words."""

    metric: str
    table: pd.DataFrame
    factorial: pd.DataFrame | None
    answer: list[str] = field(default_factory=list)
    """Paragraphs: the variants against the baseline, the grid's axes, then where the scores disagree and cautions."""
    others: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    """The summaries of the other scores it was told of, by score."""


def analyse(
    runs: pd.DataFrame,
    metric: str,
    baseline: str | None,
    lower_better: bool,
    levels: Mapping[str, Mapping[str, str]] | None = None,
    others: Mapping[str, pd.DataFrame] | None = None,
) -> Analysis:
    """The comparison of ``runs`` by ``metric`` (see :func:`unpaired.results.statistics.summarize`) with its answer;
    ``levels``: each variant's grid levels (:func:`grid_levels`); ``others``: the summaries of the other scores, to
    say where they rank another variant first."""
    table = summarize(runs, metric, baseline, lower_better)
    grid = factorial(runs, levels or {}, metric)
    values = {name: [v for v in group[metric] if _finite(v)] for name, group in runs.groupby("variant", sort=False) if metric in runs.columns}
    cautions = [line for other, summary in (others or {}).items() if (line := _disagreement(table, summary, metric, other))]
    cautions += [line] if (line := _two_seeds(table, metric)) else []
    cautions += [_chosen_on_test(metric)] if headline(metric)[1] else []
    cautions += runs.attrs.get("caveats", [])  # what the metrics say limits their scores (FID on a small test split)
    paragraphs = [_against_baseline(table, values, metric, lower_better, baseline), _grid_answer(grid, metric), cautions]
    return Analysis(metric, table, grid, [" ".join(sentences) for sentences in paragraphs if sentences], others or {})


def _against_baseline(table: pd.DataFrame, values: Mapping[str, list[float]], metric: str, lower_better: bool, baseline: str | None) -> list[str]:
    order = "lower" if lower_better else "higher"
    if baseline is None or baseline not in table.index or table.loc[baseline, "n"] == 0:
        return [f"Ranked by {metric} ({order} is better). The baseline {baseline} has no scored run yet: no variant can be tested against it."]
    comparisons = int(table.attrs.get("comparisons", 0))
    alpha = ALPHA / max(comparisons, 1)
    adjusted = f", p-values and intervals adjusted with Bonferroni for {comparisons} comparisons" if comparisons > 1 else ""
    lines = [f"Ranked by {metric} ({order} is better), each variant against the baseline {baseline} at α = {ALPHA}{adjusted}."]
    differ = table[table["verdict"].isin(["better", "worse"])]
    for name, row in differ.iterrows():
        lines.append(
            f"{name} is {row['verdict']} than the baseline: {metric} {row['mean']:.3f} against {table.loc[baseline, 'mean']:.3f}, "
            f"Δ {row['delta']:+.3f} [{row['delta_ci_low']:+.3f}, {row['delta_ci_high']:+.3f}], {_p(row['p_adjusted'])}."
        )
    unclear = table[table["verdict"].str.startswith("not distinguishable")]
    if len(unclear):
        needed = [seeds_needed(values[str(name)], values[baseline], alpha) for name in unclear.index]
        named = ", ".join(f"{name} (Δ {row['delta']:+.3f}, n = {row['n']})" for name, row in unclear.iterrows())
        sizes = " and ".join(f"more than {MOST_SEEDS}" if n and n > MOST_SEEDS else ("?" if n is None else f"about {n}") for n in needed)
        lines.append(
            f"{named} cannot be told apart from the baseline at this number of seeds; telling a difference of the size "
            f"observed at {POWER * 100:.0f} % power would take {sizes} seeds per variant."
        )
    untested = table[~table["baseline"] & ~table["verdict"].isin(["better", "worse"]) & ~table["verdict"].str.startswith("not distinguishable")]
    lines += [f"{name} cannot be tested: {row['verdict']}." for name, row in untested.iterrows()]
    if not len(differ) and comparisons > 1:
        lines.append("No variant differs from the baseline at this number of seeds.")
    return lines


def _grid_answer(grid: pd.DataFrame | None, metric: str) -> list[str]:
    if grid is None:
        return []
    lines = [
        f"Over the grid (type II ANOVA of {metric} with {grid.attrs['df_resid']} residual degrees of freedom; the terms' "
        "p-values are not adjusted for their number):"
    ]
    for term, row in grid.iterrows():
        test = f"F({row['df']}, {grid.attrs['df_resid']}) = {row['F']:.2f}, {_p(row['p'])}, partial η² = {row['partial_eta_sq']:.2f}"
        if row["interaction"]:
            lines.append(
                f"The axes {term.replace(' × ', ' and ')} interact ({test}): the effect of one depends on the other, so read "
                "the cells, not the main effects."
                if row["p"] < ALPHA
                else f"The interaction {term} is not detectable at this number of seeds ({test}): as far as it can tell, their effects add up."
            )
        else:
            lines.append(
                f"Axis {term} changes {metric} ({test}; mean by level {row['means']})."
                if row["p"] < ALPHA
                else f"Axis {term} has no effect detectable at this number of seeds ({test}; mean by level {row['means']})."
            )
    if len(grid) > 1 and not grid.attrs["interactions"]:
        lines.append("With one seed in some cell of the grid the interactions cannot be tested: the model has main effects only.")
    return lines


def _chosen_on_test(metric: str) -> str:
    """The caution of a best epoch's score: the epoch was chosen by that very score on the test images."""
    final = headline(metric)[0]
    return (
        f"Caution: {metric} is each run's best {final} over the epochs scored during training, the epoch chosen by that "
        "score on these very test images: the best of several noisy scores is biased toward better values (the more "
        f"epochs scored, the more), so these comparisons are optimistic; {final}, of the final generators, is not."
    )


def _two_seeds(table: pd.DataFrame, metric: str) -> str | None:
    """A caution when some variant has two scored seeds: its std rests on one degree of freedom."""
    two = [str(name) for name, row in table.iterrows() if row["n"] == 2]
    if not two:
        return None
    t = float(stats.t.ppf(1 - (1 - CONFIDENCE) / 2, 1))
    return (
        f"Caution: {', '.join(two)} {'has' if len(two) == 1 else 'have'} 2 scored seeds: a standard deviation of 2 values rests "
        f"on one degree of freedom, so {metric}'s 95 % interval of such a mean spans ±{t:.1f} standard errors (Student's t) "
        "and only large differences can be told apart; more seeds per variant make the comparison informative."
    )


def _disagreement(table: pd.DataFrame, other: pd.DataFrame, metric: str, other_metric: str) -> str | None:
    first, other_first = _first(table), _first(other)
    if first is None or other_first is None or first == other_first:
        return None
    return f"{other_metric} ranks {other_first} first where {metric} ranks {first} first: the two scores disagree on the best variant."


def _first(table: pd.DataFrame) -> str | None:
    ranked = table[(table["n"] > 0) & (table["rank"] == 1)]
    return str(ranked.index[0]) if len(ranked) == 1 else None


def _p(value: float) -> str:
    return "p n/a" if math.isnan(value) else ("p < 0.001" if value < 0.001 else f"p = {value:.3f}")
