"""Comparison of a study's variants: the analysis with the other scores' view, notes on what it leaves out, and the plot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from unpaired.results.analysis import Analysis, analyse
from unpaired.results.drawing import drawable, pyplot
from unpaired.results.scores import secondary_scores
from unpaired.results.statistics import RUN_COLUMNS, summarize


@dataclass(frozen=True)
class RunsToCompare:
    """A study's finished runs to compare (from its output folder or its MLflow experiment) and what goes with them."""

    name: str
    baseline: str | None
    runs: pd.DataFrame
    """One row per run: variant, seed, run id, planned seeds, ... and its scores (see ``describe_scores``)."""
    left_out: list[str]
    """A line for each kind of finished run left out, with what to do."""
    ranked_by: str | None
    """The score the study ranks by, when known."""
    levels: dict[str, dict[str, str]]
    """Each variant's level of every grid axis (empty when unknown)."""


def lower_is_better(runs: pd.DataFrame, column: str) -> bool:
    """Whether a smaller ``column`` is better, as the metric that made it says (``runs.attrs``); a column no metric
    made is a loss term, which training minimises."""
    return bool(runs.attrs.get("lower_is_better", {}).get(column, True))


def compare_runs(runs: pd.DataFrame, metric: str, baseline: str | None, levels: dict[str, dict[str, str]]) -> Analysis:
    """The comparison of ``runs`` by ``metric`` (see :func:`unpaired.results.analysis.analyse`), told where the other
    scores rank another variant first."""
    others = {other: summarize(runs, other, baseline, lower_is_better(runs, other)) for other in secondary_scores(metric, runs)}
    return analyse(runs, metric, baseline, lower_is_better(runs, metric), levels, others)


def not_scored_so(runs: pd.DataFrame, metric: str) -> str | None:
    """A note naming the variants none of whose finished runs has ``metric`` (a one-way method has no ``fid_mean``),
    which a ranking by it leaves out, and the scores every variant has; None when every variant has it. A failed
    scoring (NaN) is not a missing score: its variant stays in the table, last."""
    failed = runs["scoring_failed"].fillna(False).astype(bool) if "scoring_failed" in runs.columns else False
    scored = runs[metric].notna() | failed if metric in runs.columns else pd.Series(False, index=runs.index)
    lacking = [str(variant) for variant, has in scored.groupby(runs["variant"], sort=False).any().items() if not has]
    if not lacking:
        return None
    columns = [column for column in runs.columns if column not in RUN_COLUMNS]
    shared = [column for column in columns if runs[column].notna().groupby(runs["variant"]).any().all()]
    return (
        f"{', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no {metric} (not scored so: a method that translates "
        f"one direction is scored in that direction only), left out of the ranking by {metric}; every variant has: "
        f"{', '.join(shared) or 'no score'}"
    )


def plot(table: pd.DataFrame, runs: pd.DataFrame, metric: str, target: Path | BinaryIO) -> None:
    """The metric per variant (ranked, baseline in orange): every seed as a point, the mean with its 95 % CI as a bar."""
    with pyplot() as plt:
        _plot(plt, table, runs, metric, target)


def _plot(plt: Any, table: pd.DataFrame, runs: pd.DataFrame, metric: str, target: Path | BinaryIO) -> None:
    names = list(table.index)
    figure, axes = plt.subplots(figsize=(max(4.0, 1.0 * len(names) + 2.0), 3.6))
    for position, name in enumerate(names):
        row, color = table.loc[name], "tab:orange" if table.loc[name, "baseline"] else "tab:blue"
        low, high = row["ci_low"], row["ci_high"]
        if not math.isnan(low):
            axes.errorbar(
                position, row["mean"], yerr=[[row["mean"] - low], [high - row["mean"]]], fmt="_", markersize=18, capsize=6, color=color, linewidth=2
            )
        else:
            axes.plot(position, row["mean"], "_", markersize=18, color=color)
        values = runs.loc[runs["variant"] == name, metric].dropna()
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(len(values))
        axes.scatter(position + jitter, values, color="black", s=14, zorder=3)
    axes.set_xticks(range(len(names)), [drawable(name) for name in names], rotation=30, ha="right")
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ylabel(drawable(metric))
    axes.set_title("points: seeds; bar: mean with 95 % CI", fontsize=9)
    figure.tight_layout()
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", dpi=100)
    plt.close(figure)
