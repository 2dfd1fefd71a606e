"""A study's finished runs as its MLflow experiment has them, read in bounded time.

Only the runs the study plans now, scored as it asks, are compared (see
:mod:`unpaired.results.current_plan`): named by its file, the study is the file's; named by its bare
name, it is the one the latest invocation recorded on its parent run, planned with the plugins
installed now.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from unpaired.errors import UsageError
from unpaired.results.analysis import grid_levels
from unpaired.results.compare import RunsToCompare
from unpaired.results.current_plan import RECORDED_STUDY, CurrentPlan, left_out_lines, unfinished_line
from unpaired.tracking.store import RUN_ROLES, deleted_experiment, reading
from unpaired.results.scores import describe_scores
from unpaired.tracking.parent import PARENT_ROLE
from unpaired.results.tables import folder_name
from unpaired.plugin_api.lifecycle import Scoring


def tracked_results(name: str, uri: str | None, timeout: float, now: CurrentPlan | None, notes: list[str]) -> RunsToCompare:
    """The runs of study ``name`` to compare: with ``now``, those it plans now scored as it asks (one line for each kind
    left out), the latest of each variant x seed; without, the latest finished run of each variant x seed."""
    runs = finished_runs(name, uri, timeout)
    if now is not None:
        planned = runs["run_id"].isin(now.run_ids)
        counted = pd.Series([now.counts(*run) for run in zip(runs["run_id"], runs["evaluation"])], index=runs.index, dtype=bool)
        notes = [*notes, *([now.unchecked] if now.unchecked else []), *left_out_lines(int((planned & ~counted).sum()), int((~planned).sum()))]
        runs = runs[counted]
    # a variant x seed trained twice under one configuration (its folder removed in between) counts once: the latest
    runs = runs.sort_values("start_time").drop_duplicates(["variant", "seed"], keep="last")
    table = describe_scores(runs.drop(columns=["start_time", "evaluation", "scoring", "train_data"]), list(runs["scoring"]), list(runs["train_data"]))
    if now is None:
        return RunsToCompare(name, _latest_parent(name, uri, timeout).get("tags.unpaired.baseline"), table, notes, None, {})
    study = now.study
    compared = set(table["variant"])
    notes += unfinished_line([variant for variant in dict.fromkeys(run.variant for run in study.runs) if variant not in compared], " in MLflow")
    levels = grid_levels(study.spec.grid, len(study.spec.variants), [(run.variant, run.overrides) for run in study.runs])
    return RunsToCompare(study.spec.name, study.baseline, table, notes, study.metric, levels)


def finished_runs(study_name: str, uri: str | None, timeout: float) -> pd.DataFrame:
    """Every finished run of the study's experiment: variant, seed, run id, planned seeds, epochs, training time, run
    folder, MLflow run, ``start_time``, ``evaluation`` (the identity its scores carry), ``scoring``, ``train_data`` (the
    hashes of its training images) and all metrics."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    with reading(uri, timeout):
        experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(study_name)
        if experiment is None:
            raise UsageError(f"no MLflow experiment named {study_name!r} at {mlflow.get_tracking_uri()}; run the study first")
        if deleted := deleted_experiment(experiment, mlflow.get_tracking_uri()):
            raise UsageError(f"{deleted}; or compare the study's output folder instead")
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
        return pd.DataFrame(columns=["variant", "seed", "run_id", "planned_seeds", "start_time", "evaluation", "scoring", "train_data"])
    scorings = [_scoring(run) for _, run in runs.iterrows()]
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
            "evaluation": [None if scoring is None else scoring.identity for scoring in scorings],
            "scoring": scorings,
            "train_data": _tag(runs, "tags.unpaired.train_data").map(lambda hashes: json.loads(hashes) if isinstance(hashes, str) else {}),
        }
    )
    metrics = runs[[c for c in runs.columns if c.startswith("metrics.")]].rename(columns=lambda c: c.removeprefix("metrics."))
    return pd.concat([table, metrics], axis=1)


def recorded_study(study_name: str, uri: str | None, timeout: float) -> Any:
    """The study as the latest invocation resolved it (its parent run's ``unpaired_study.json``); None when no parent
    records it (tracked by an older unpaired, or its artifact store cannot be read)."""
    import mlflow

    parent = _latest_parent(study_name, uri, timeout)
    if not parent:
        return None
    with reading(uri, timeout):
        try:
            return mlflow.artifacts.load_dict(f"{parent['artifact_uri']}/{RECORDED_STUDY}")
        except Exception:  # not recorded, or its artifacts are elsewhere: compared as trained, with a note
            return None


def _latest_parent(study_name: str, uri: str | None, timeout: float) -> dict[str, Any]:
    """The parent run of the study's latest invocation as MLflow's search gives it (empty when there is none)."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    with reading(uri, timeout):
        parents = mlflow.search_runs(
            experiment_names=[study_name],
            filter_string=f"tags.`unpaired.role` = '{PARENT_ROLE}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="pandas",
        )
    return {} if parents.empty else dict(parents.iloc[0])


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
