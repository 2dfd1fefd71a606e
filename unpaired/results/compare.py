"""Comparison of a study's variants: its finished runs from MLflow, the summary as text, and the plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from unpaired.errors import UsageError
from unpaired.results.mlflow_store import RUN_ROLES
from unpaired.results.statistics import RUN_COLUMNS


def finished_runs(study_name: str, uri: str | None) -> pd.DataFrame:
    """One row per finished variant x seed run of the study's experiment: variant, seed, run id and all metrics."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
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
            "start_time": runs["start_time"],
        }
    )
    metrics = runs[[c for c in runs.columns if c.startswith("metrics.")]].rename(columns=lambda c: c.removeprefix("metrics."))
    table = pd.concat([table, metrics], axis=1)
    # a variant x seed trained twice (e.g. after its spec changed) counts once: the latest
    table = table.sort_values("start_time").drop_duplicates(["variant", "seed"], keep="last").drop(columns="start_time")
    table.attrs["lower_is_better"] = {
        column: better
        for tags in runs.get("tags.unpaired.lower_is_better", pd.Series(dtype=object)).dropna()
        for column, better in json.loads(tags).items()
    }
    table.attrs["extractors"] = sorted(set(runs.get("tags.unpaired.extractor", pd.Series(dtype=object)).dropna()))
    return table


def heading(runs: pd.DataFrame, column: str) -> str:
    """``column`` as tables head it: a score with the feature extractor that made it (``fid_mean (inception)``)."""
    extractors = runs.attrs.get("extractors", [])
    return f"{column} ({', '.join(extractors)})" if extractors and column in runs.attrs.get("lower_is_better", {}) else column


def lower_is_better(runs: pd.DataFrame, column: str) -> bool:
    """Whether a smaller ``column`` is better, as the metric that made it says (``runs.attrs``); a column no metric
    made is a loss term, which training minimises."""
    return bool(runs.attrs.get("lower_is_better", {}).get(column, True))


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


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def table_rows(table: pd.DataFrame, metric: str) -> tuple[list[str], list[list[str]]]:
    """The summary's header and rows as text cells: what the terminal, Markdown and the report show."""
    header = ["rank", "variant", f"{metric} mean ± std", "95 % CI", "seeds", "Δ vs baseline [95 % CI]", "p (Holm)", "verdict"]
    rows = []
    for variant, row in table.iterrows():
        mark = " (baseline)" if row["baseline"] else ""
        incomplete = "" if row["complete"] else f" (incomplete: {row['n']}/{row['planned']} seeds)"
        delta = "" if row["baseline"] or math.isnan(row["delta"]) else f"{row['delta']:+.3f}"
        if delta and not math.isnan(row["delta_ci_low"]):
            delta += f" [{row['delta_ci_low']:+.3f}, {row['delta_ci_high']:+.3f}]"
        rows.append(
            [
                str(row["rank"]),
                f"{variant}{mark}{incomplete}",
                f"{row['mean']:.3f} ± {_number(row['std'])}",
                f"[{_number(row['ci_low'])}, {_number(row['ci_high'])}]",
                str(row["n"]),
                delta,
                "" if row["baseline"] else _p(row["p_holm"]),
                row["verdict"],
            ]
        )
    return header, rows


def render(table: pd.DataFrame, metric: str, fmt: str) -> str:
    """The summary as ``table`` (aligned text), ``markdown``, ``csv`` or ``json``."""
    if fmt == "csv":
        return table.to_csv()
    if fmt == "json":
        return json.dumps(json.loads(table.reset_index().to_json(orient="records")), indent=1)
    header, rows = table_rows(table, metric)
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]) + "\n"


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


def study_baseline(study_name: str, uri: str | None) -> str | None:
    """The baseline recorded by the latest invocation of the study (its parent run's tag)."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    parents = mlflow.search_runs(
        experiment_names=[study_name],
        filter_string="tags.`unpaired.role` = 'study'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="pandas",
    )
    return None if parents.empty else parents.iloc[0]["tags.unpaired.baseline"]
