"""How a study's variants compare over seeds: what ``unpaired compare`` prints and the report shows.

Per variant: mean, sample std (ddof 1) and the 95 % confidence interval of the mean (Student's t,
n - 1 degrees of freedom); against the baseline: Δ = mean - baseline mean and Welch's t-test
(unequal variances), adjusted with Bonferroni over the family of every variant tested against
the baseline (m of them): the p-value times m, and Δ's interval at 1 - α/m, so that an interval
excludes 0 exactly when the adjusted p is below α (Holm's step-down p-values have no intervals that
agree with them). The verdict in words is at α = 0.05. The distributions are scipy's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from unpaired.errors import UsageError

CONFIDENCE = 0.95
ALPHA = 0.05
RUN_COLUMNS = ("variant", "seed", "run_id", "planned_seeds", "scoring_failed", "epochs", "training_seconds", "run_folder", "mlflow_run_id")
"""The columns of a runs table besides its metrics."""


def bonferroni(p_values: Sequence[float]) -> list[float]:
    """Bonferroni adjusted p-values (each times the number tested, at most 1), in the order given; NaN (no test)
    stays NaN and is not counted."""
    tested = sum(not math.isnan(p) for p in p_values)
    return [p if math.isnan(p) else min(1.0, tested * p) for p in p_values]


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95 % confidence interval of the mean of ``values`` (NaN with fewer than two)."""
    if len(values) < 2:
        return math.nan, math.nan
    mean, sem = float(np.mean(values)), float(stats.sem(values))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def welch(values: Sequence[float], baseline: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Welch's t-test of ``values`` against ``baseline``: the ``confidence`` interval of the difference of means and
    the two-sided p-value (NaN when either has fewer than two values or neither varies)."""
    if len(values) < 2 or len(baseline) < 2 or (np.std(values) == 0 and np.std(baseline) == 0):
        return math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(values, baseline, equal_var=False)
        interval = result.confidence_interval(confidence)
    return float(interval.low), float(interval.high), float(result.pvalue)


def verdict(delta: float, p_adjusted: float, n: int, n_baseline: int, lower_better: bool) -> str:
    """``better`` / ``worse`` (than the baseline, at α after adjustment), or why it cannot be told apart."""
    seeds = f"n = {n}" if n == n_baseline else f"n = {n} vs {n_baseline}"
    if math.isnan(p_adjusted):
        return f"too few seeds to test ({seeds})" if min(n, n_baseline) < 2 else "not testable: no spread over seeds"
    if p_adjusted >= ALPHA:
        return f"not distinguishable from the baseline at {seeds}"
    return "better" if (delta < 0) == lower_better else "worse"


def summarize(runs: pd.DataFrame, metric: str, baseline: str | None, lower_better: bool) -> pd.DataFrame:
    """One row per variant with a scored run (``runs``: one row per finished run with ``variant``, ``planned_seeds``,
    ``scoring_failed`` and metric columns), ranked best first (``lower_better``: as the metric that made the column says; see the module
    docstring). A NaN or infinite score is a failed scoring: it is left out of the statistics, and a variant with no
    finite score stays in the table, last, with ``n`` 0 and the verdict saying so."""
    if metric not in runs.columns:
        available = sorted(c for c in runs.columns if c not in RUN_COLUMNS)
        raise UsageError(f"no metric {metric!r} in the finished runs; available: {', '.join(available) or 'none'}")
    finite = runs[metric].map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))
    failed = runs["scoring_failed"] if "scoring_failed" in runs.columns else pd.Series(False, index=runs.index)
    values = {
        name: group.loc[finite[group.index], metric].tolist()
        for name, group in runs.groupby("variant", sort=False)
        if finite[group.index].any() or failed[group.index].any()
    }  # a variant that was never scored is not in the table
    planned = runs.groupby("variant", sort=False)["planned_seeds"].max()
    rows = []
    for name, seeds in values.items():
        low, high = mean_interval(seeds)
        rows.append(
            {
                "variant": name,
                "baseline": name == baseline,
                "mean": float(np.mean(seeds)) if seeds else math.nan,
                "std": float(np.std(seeds, ddof=1)) if len(seeds) > 1 else math.nan,
                "ci_low": low,
                "ci_high": high,
                "n": len(seeds),
                "planned": int(planned[name]),
            }
        )
    if not rows:
        raise UsageError(f"no finished run has a {metric!r} score")
    table = pd.DataFrame(rows).set_index("variant")
    table["complete"] = table["n"] >= table["planned"]
    table["rank"] = table["mean"].rank(ascending=lower_better, method="min", na_option="bottom").astype(int)
    has_baseline = bool(values.get(baseline))
    testable = [name for name, seeds in values.items() if has_baseline and name != baseline and not math.isnan(welch(seeds, values[baseline])[2])]
    confidence = 1 - (1 - CONFIDENCE) / max(1, len(testable))  # Bonferroni's: the intervals agree with the adjusted p-values
    tests = {name: welch(seeds, values[baseline], confidence) if name in testable else (math.nan,) * 3 for name, seeds in values.items()}
    table["delta"] = table["mean"] - table.loc[baseline, "mean"] if has_baseline else math.nan
    table["delta_ci_low"] = [tests[name][0] for name in table.index]
    table["delta_ci_high"] = [tests[name][1] for name in table.index]
    table["p_value"] = [tests[name][2] for name in table.index]
    table["p_adjusted"] = bonferroni(table["p_value"].tolist())
    table.attrs["comparisons"], table.attrs["interval_confidence"] = len(testable), confidence
    n_baseline = len(values.get(baseline, []))
    table["verdict"] = [
        "no finite score: the scoring failed"
        if row.n == 0
        else "baseline"
        if name == baseline
        else verdict(row.delta, row.p_adjusted, row.n, n_baseline, lower_better)
        if has_baseline
        else "no baseline results"
        for name, row in table.iterrows()
    ]
    return table.sort_values(["rank", "n"], ascending=[True, False])
