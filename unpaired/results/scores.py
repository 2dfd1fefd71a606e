"""What a study's score columns are, as the metrics that made them declared it in each run's scoring: which way each is
better, its label, whether it compares features, and the caveats it needs. Compare and the report name no metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from unpaired.results.same_data import data_cautions
from unpaired.results.statistics import RUN_COLUMNS
from unpaired.plugin_api.lifecycle import Scoring

DIRECTIONS = {"mean": "mean of A→B and B→A", "a2b": "A→B", "b2a": "B→A"}
"""A headline column's last part -> what it averages, in words."""


def describe_scores(runs: pd.DataFrame, scored: Sequence[Scoring | None], train_data: Sequence[Mapping[str, str]]) -> pd.DataFrame:
    """``runs`` with ``attrs`` saying what its score columns are, from each row's scoring (``scored``, in row order; None:
    not scored): ``lower_is_better``, ``labels``, ``from_features`` (each by headline column), ``extractors``,
    ``test_images`` (the fewest of any direction) and ``caveats``: the metrics', then those of
    :func:`~unpaired.results.same_data.data_cautions` (``train_data``: the hashes of each row's training images)."""
    scored = [scoring if isinstance(scoring, Scoring) else None for scoring in scored]  # a table's empty cell may be NaN
    scorings = [scoring for scoring in scored if scoring is not None]
    runs.attrs["lower_is_better"] = {k: v for scoring in scorings for k, v in scoring.lower_is_better.items()}
    runs.attrs["labels"] = {k: v for scoring in scorings for k, v in scoring.labels.items()}
    runs.attrs["from_features"] = {k: v for scoring in scorings for k, v in scoring.from_features.items()}
    runs.attrs["extractors"] = sorted({scoring.extractor for scoring in scorings if scoring.extractor})
    images = [min(scoring.test_images.values()) for scoring in scorings if scoring.test_images]
    runs.attrs["test_images"] = min(images) if images else None
    runs.attrs["caveats"] = list(dict.fromkeys(caveat for scoring in scorings for caveat in scoring.caveats))
    names = [f"{variant} seed {seed}" for variant, seed in zip(runs["variant"], runs["seed"])]
    test_data = [scoring.test_data if scoring else {} for scoring in scored]
    runs.attrs["caveats"] += data_cautions(names, list(runs["variant"]), train_data, test_data)
    runs.attrs["caveats"] += extractor_cautions(list(runs["variant"]), scored)
    return runs


def extractor_cautions(variants: Sequence[str], scored: Sequence[Scoring | None]) -> list[str]:
    """A caution when the runs (each by its variant, with its scoring or None) were scored with different feature
    extractors: each extractor's features have a scale of their own, so their FIDs do not compare."""
    by_extractor: dict[str, list[str]] = {}
    for variant, scoring in zip(variants, scored):
        if scoring is not None and scoring.extractor and variant not in by_extractor.setdefault(scoring.extractor, []):
            by_extractor[scoring.extractor].append(variant)
    if len(by_extractor) < 2:
        return []
    listed = "; ".join(f"{extractor}: {', '.join(names)}" for extractor, names in by_extractor.items())
    return [
        f"Caution: the scores from features come from different feature extractors ({listed}): each extractor's features "
        "measure distance on a scale of their own, so such scores from one extractor do not compare with another's; give "
        "every variant one eval.feature_extractor and run the study again (it scores the finished runs again, without "
        "training them)."
    ]


def headline(column: str) -> tuple[str, bool]:
    """The headline column a result column belongs to, and whether it is the best epoch's (``fid_mean_best``)."""
    return (column.removesuffix("_best"), True) if column.endswith("_best") else (column, False)


def from_features(runs: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` was computed from the feature extractor's features (runs scored before metrics said so: every
    score was)."""
    base = headline(column)[0]
    declared = runs.attrs.get("from_features", {})
    return bool(declared.get(base, base in runs.attrs.get("lower_is_better", {})))


def metric_title(column: str, runs: pd.DataFrame) -> str:
    """How a score is named above its table: ``FID, final generators (mean of A→B and B→A), inception features``; a
    column no metric labelled (a loss term, older runs) by its name."""
    base, best = headline(column)
    label, direction = runs.attrs.get("labels", {}).get(base), DIRECTIONS.get(base.rsplit("_", 1)[-1])
    if label is None or direction is None:
        return column
    extractors = runs.attrs.get("extractors", [])
    features = f", {', '.join(extractors)} features" if extractors and from_features(runs, column) else ""
    return f"{label}, {'best epoch during training, chosen on the test images' if best else 'final generators'} ({direction}){features}"


def heading(runs: pd.DataFrame, column: str) -> str:
    """``column`` as tables head it: a score from features with the extractor that made them (``fid_mean (inception)``)."""
    extractors = runs.attrs.get("extractors", [])
    return f"{column} ({', '.join(extractors)})" if extractors and from_features(runs, column) else column


def secondary_scores(metric: str, runs: pd.DataFrame) -> list[str]:
    """The scores reported after ``metric``: the other headline scores of its direction, then the best epoch's of each
    (``kid_mean`` and ``fid_mean_best`` after ``fid_mean``), those the runs have."""
    direction = headline(metric)[0].rsplit("_", 1)[-1]
    same = [column for column in runs.attrs.get("lower_is_better", {}) if column.rsplit("_", 1)[-1] == direction]
    return [column for column in [*same, *(f"{c}_best" for c in same)] if column != metric and column in runs.columns]


def ranking_score(runs: pd.DataFrame, chosen: str | None) -> str | None:
    """``chosen``, else the first metric's mean over both directions the runs have, else its first score (the rule of
    the study's own ranking score); None without any score."""
    declared = runs.attrs.get("lower_is_better") or [c for c in runs.columns if c not in RUN_COLUMNS]  # undeclared: tracked by hand
    headlines = [column for column in declared if column in runs.columns]
    return chosen or next((column for column in headlines if column.endswith("_mean")), next(iter(headlines), None))
