"""Comparison of a study's variants from its MLflow runs: mean ± std over seeds, rank, Δ vs baseline, plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from unpaired.errors import UsageError

LOWER_IS_BETTER = ("fid", "kid", "cycle", "idt", "G_adv", "D_")


def finished_runs(study_name: str, uri: str | None) -> pd.DataFrame:
    """One row per finished variant x seed run of the study's experiment: variant, seed, run id and all metrics."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    if mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(study_name) is None:
        raise UsageError(f"no MLflow experiment named {study_name!r} at {mlflow.get_tracking_uri()}; run the study first")
    runs = mlflow.search_runs(
        experiment_names=[study_name],
        filter_string="tags.`unpaired.role` = 'variant' and attributes.status = 'FINISHED'",
        output_format="pandas",
    )
    if runs.empty:
        return pd.DataFrame(columns=["variant", "seed", "run_id", "planned_seeds"])
    table = pd.DataFrame({
        "variant": runs["tags.unpaired.variant"],
        "seed": runs["tags.unpaired.seed"].astype(int),
        "run_id": runs["tags.unpaired.run_id"],
        "planned_seeds": runs["tags.unpaired.planned_seeds"].astype(int),
        "start_time": runs["start_time"],
    })
    metrics = runs[[c for c in runs.columns if c.startswith("metrics.")]].rename(columns=lambda c: c.removeprefix("metrics."))
    table = pd.concat([table, metrics], axis=1)
    # a variant x seed trained twice (e.g. after its spec changed) counts once: the latest
    return table.sort_values("start_time").drop_duplicates(["variant", "seed"], keep="last").drop(columns="start_time")


def summarize(runs: pd.DataFrame, metric: str, baseline: str | None, lower_is_better: bool | None = None) -> pd.DataFrame:
    """Per variant: mean, std (sample, ddof=1) and n over seeds, rank, Δ = mean - baseline mean, and whether
    |Δ| exceeds the seed spread sqrt(std² + std_baseline²) (the std of a difference of two single runs)."""
    if metric not in runs.columns:
        available = sorted(c for c in runs.columns if c not in ("variant", "seed", "run_id", "planned_seeds"))
        raise UsageError(f"no metric {metric!r} in the finished runs; available: {', '.join(available) or 'none'}")
    if lower_is_better is None:
        lower_is_better = metric.startswith(LOWER_IS_BETTER)
    grouped = runs.dropna(subset=[metric]).groupby("variant", sort=False)
    table = pd.DataFrame({
        "mean": grouped[metric].mean(),
        "std": grouped[metric].std(ddof=1),
        "n": grouped[metric].count(),
        "planned": grouped["planned_seeds"].max(),
    })
    table["complete"] = table["n"] >= table["planned"]
    table["rank"] = table["mean"].rank(ascending=lower_is_better, method="min").astype(int)
    if baseline is not None and baseline in table.index:
        base_mean, base_std = table.loc[baseline, "mean"], table.loc[baseline, "std"]
        table["delta"] = table["mean"] - base_mean
        spread = (table["std"] ** 2 + base_std**2) ** 0.5
        table["beyond_spread"] = [
            None if name == baseline or math.isnan(s) else bool(abs(d) > s)
            for name, d, s in zip(table.index, table["delta"], spread)
        ]
    else:
        table["delta"], table["beyond_spread"] = float("nan"), None
    table.insert(0, "baseline", [name == baseline for name in table.index])
    return table.sort_values(["rank", "n"], ascending=[True, False]).rename_axis("variant")


def render(table: pd.DataFrame, metric: str, fmt: str) -> str:
    """The summary as ``table`` (aligned text), ``markdown``, ``csv`` or ``json``."""
    if fmt == "csv":
        return table.to_csv()
    if fmt == "json":
        return json.dumps(json.loads(table.reset_index().to_json(orient="records")), indent=1)
    rows = []
    for variant, row in table.iterrows():
        mark = " (baseline)" if row["baseline"] else ""
        incomplete = "" if row["complete"] else f" (incomplete: {row['n']}/{row['planned']} seeds)"
        std = "n/a" if math.isnan(row["std"]) else f"{row['std']:.3f}"
        delta = "" if row["baseline"] or math.isnan(row["delta"]) else f"{row['delta']:+.3f}"
        beyond = {True: "yes", False: "no", None: ""}[row["beyond_spread"]]
        rows.append([str(row["rank"]), f"{variant}{mark}{incomplete}", f"{row['mean']:.3f} ± {std}", str(row["n"]), delta, beyond])
    header = ["rank", "variant", f"{metric} mean ± std", "seeds", "Δ vs baseline", "Δ > seed spread"]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]) + "\n"


def plot(table: pd.DataFrame, runs: pd.DataFrame, metric: str, path: Path) -> None:
    """Bar chart of the means (ranked, baseline highlighted) with ± std error bars and each seed as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table.index)
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 1.5), 4.0))
    colors = ["tab:orange" if table.loc[n, "baseline"] else "tab:blue" for n in names]
    axes.bar(range(len(names)), table["mean"], yerr=table["std"].fillna(0), capsize=4, color=colors, alpha=0.7)
    for position, name in enumerate(names):
        values = runs.loc[runs["variant"] == name, metric].dropna()
        axes.scatter([position] * len(values), values, color="black", s=12, zorder=3)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric}: mean ± std, points = seeds", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def study_baseline(study_name: str, uri: str | None) -> str | None:
    """The baseline recorded by the latest invocation of the study (its parent run's tag)."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    parents = mlflow.search_runs(experiment_names=[study_name], filter_string="tags.`unpaired.role` = 'study'",
                                 order_by=["attributes.start_time DESC"], max_results=1, output_format="pandas")
    return None if parents.empty else parents.iloc[0]["tags.unpaired.baseline"]


def write_comparison(study_name: str, uri: str | None, baseline: str, metric: str, out: Path) -> list[Path]:
    """Write comparison.md, comparison.csv and comparison.png for a study into ``out``; return the paths
    (none when no run has the metric yet)."""
    runs = finished_runs(study_name, uri)
    if runs.empty or metric not in runs.columns:
        return []
    table = summarize(runs, metric, baseline)
    paths = [out / "comparison.md", out / "comparison.csv", out / "comparison.png"]
    paths[0].write_text(render(table, metric, "markdown"))
    paths[1].write_text(render(table, metric, "csv"))
    plot(table, runs, metric, paths[2])
    return paths
