"""Comparison of a study's variants: its finished runs from MLflow, the summary as text, and the plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from unpaired.errors import UsageError
from unpaired.storage.records import Scoring
from unpaired.results.mlflow_store import RUN_ROLES, reading
from unpaired.results.analysis import Analysis, analyse
from unpaired.results.scores import describe_scores, secondary_scores
from unpaired.results.statistics import RUN_COLUMNS, summarize
from unpaired.results.tables import folder_name


def finished_runs(study_name: str, uri: str | None, timeout: float) -> pd.DataFrame:
    """One row per finished variant x seed run of the study's experiment: variant, seed, run id and all metrics. The
    store is read in bounded time (see :func:`unpaired.results.mlflow_store.reading`)."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    with reading(uri, timeout):
        if mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(study_name) is None:
            raise UsageError(f"no MLflow experiment named {study_name!r} at {mlflow.get_tracking_uri()}; run the study first")
        found = [
            table
            for role in RUN_ROLES
            if not (
                table := mlflow.search_runs(
                    experiment_names=[study_name],
                    output_format="pandas",
                    filter_string=f"tags.`unpaired.role` = '{role}' and attributes.status = 'FINISHED'",
                )
            ).empty
        ]
    runs = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    if runs.empty:
        return pd.DataFrame(columns=["variant", "seed", "run_id", "planned_seeds"])
    table = pd.DataFrame(
        {
            "variant": runs["tags.unpaired.variant"],
            "seed": runs["tags.unpaired.seed"].astype(int),
            "run_id": runs["tags.unpaired.run_id"],
            "planned_seeds": runs["tags.unpaired.planned_seeds"].astype(int),
            "epochs": pd.to_numeric(_tag(runs, "tags.unpaired.epochs"), errors="coerce"),  # runs tracked before it was recorded have none
            "training_seconds": pd.to_numeric(_tag(runs, "tags.unpaired.training_seconds"), errors="coerce"),
            "run_folder": _tag(runs, "tags.unpaired.folder").map(lambda path: None if pd.isna(path) else folder_name(path)),
            "mlflow_run_id": runs["run_id"],
            "start_time": runs["start_time"],
        }
    )
    metrics = runs[[c for c in runs.columns if c.startswith("metrics.")]].rename(columns=lambda c: c.removeprefix("metrics."))
    table = pd.concat([table, metrics], axis=1)
    # a variant x seed trained twice (e.g. after its spec changed) counts once: the latest
    table = table.sort_values("start_time").drop_duplicates(["variant", "seed"], keep="last").drop(columns="start_time")
    return describe_scores(table, [scoring for _, run in runs.iterrows() if (scoring := _scoring(run)) is not None])


def _scoring(run: pd.Series) -> Scoring | None:
    """What made an MLflow run's scores, as its tags say: the whole scoring, or (tracked before it was recorded) its parts."""
    if isinstance(whole := run.get("tags.unpaired.scoring"), str):
        return Scoring.model_validate_json(whole)
    if not isinstance(better := run.get("tags.unpaired.lower_is_better"), str):
        return None
    images = run.get("tags.unpaired.test_images")
    return Scoring(
        identity=str(run.get("tags.unpaired.evaluation") or ""),
        extractor=str(run.get("tags.unpaired.extractor") or ""),
        lower_is_better=json.loads(better),
        test_images=json.loads(images) if isinstance(images, str) else {},
    )


def _tag(runs: pd.DataFrame, column: str) -> pd.Series:
    """A tag's column of MLflow's search results; all None when no run has the tag."""
    return runs[column] if column in runs.columns else pd.Series(None, index=runs.index, dtype=object)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ylabel(metric)
    axes.set_title("points: seeds; bar: mean with 95 % CI", fontsize=9)
    figure.tight_layout()
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", dpi=100)
    plt.close(figure)


def study_baseline(study_name: str, uri: str | None, timeout: float) -> str | None:
    """The baseline recorded by the latest invocation of the study (its parent run's tag), read in bounded time."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    with reading(uri, timeout):
        parents = mlflow.search_runs(
            experiment_names=[study_name],
            filter_string="tags.`unpaired.role` = 'study'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="pandas",
        )
    return None if parents.empty else parents.iloc[0]["tags.unpaired.baseline"]
