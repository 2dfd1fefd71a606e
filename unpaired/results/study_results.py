"""A study's results read from its output folder alone: the index (``study.json``) and each run's folder.

Nothing here needs MLflow or the study file: a study whose tracking was off, or whose MLflow store
is gone, reads the same. A run that has not finished is reported with what its folder says
(``failed`` with its error, ``running``, ``partial``, ``pending``).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from unpaired.storage.files import CorruptFileError
from unpaired.plugin_api.lifecycle import RunResult
from unpaired.storage.run_folder import RunFolder
from unpaired.results.analysis import grid_levels
from unpaired.results.scores import describe_scores
from unpaired.results.compare import RunsToCompare
from unpaired.plugin_api.registry import Registry
from unpaired.results.current_plan import CurrentPlan, left_out_lines, replan, unfinished_line
from unpaired.results.study_folder import INDEX, moved_run, planned_entries, read_index, unplanned_runs
from unpaired.results.tables import folder_name


@dataclass
class RunRecord:
    """One run of the study as its folder has it."""

    variant: str
    seed: int
    run_id: str
    folder: RunFolder
    overrides: dict[str, Any]
    status: str
    """``finished``, ``failed``, ``running``, ``partial`` (has a checkpoint) or ``pending``."""
    result: RunResult | None
    scored_elsewhere: bool = False
    """Finished, but its scores were made under another evaluation than the study's: not compared with the others."""

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def spec(self) -> dict[str, Any] | None:
        """The resolved variant it trained (``None`` before it started, or when its file cannot be read)."""
        try:
            return self.folder.read_spec() if self.folder.spec_file.is_file() else None
        except CorruptFileError:
            return None

    def mlflow_run_id(self) -> str | None:
        """The MLflow run that tracks it, as its folder records it (None when untracked or unreadable)."""
        try:
            link = self.folder.read_tracking_link()
        except CorruptFileError:
            return None
        return None if link is None else link["run_id"]

    def history(self) -> list[dict[str, float]]:
        """Its per-epoch rows so far; none when the file cannot be read (:meth:`history_problem` says why): a report
        shows what it can."""
        return self._history[0]

    def history_problem(self) -> str | None:
        """Why its history file cannot be read (its path and what is wrong); None when it can, or there is none yet."""
        return self._history[1]

    @functools.cached_property
    def _history(self) -> tuple[list[dict[str, float]], str | None]:
        try:
            return self.folder.read_history(), None
        except CorruptFileError as error:
            return [], str(error)


@dataclass
class StudyResults:
    """Everything a study's output folder says about it."""

    out: Path
    index: dict[str, Any]
    """``study.json``: name, description, question, baseline, variants, seeds, unpaired version, git commit, runs."""
    runs: list[RunRecord]
    problems: list[str]
    """Files that could not be read (their runs count as not finished): each path with what is wrong."""
    left_out: list[str]
    """Finished runs that the comparison leaves out, one line per reason (with what to do)."""
    index_problem: str | None = None
    """Why ``study.json`` could not be read, when the runs were found from the run folders instead."""

    @property
    def name(self) -> str:
        return self.index["name"]

    @property
    def baseline(self) -> str | None:
        return self.index.get("baseline")

    @property
    def variants(self) -> list[str]:
        """The variants in study order."""
        return self.index.get("variants") or list(dict.fromkeys(run.variant for run in self.runs))

    def of_variant(self, variant: str) -> list[RunRecord]:
        return [run for run in self.runs if run.variant == variant]

    def metrics(self) -> pd.DataFrame:
        """One row per finished run: ``variant``, ``seed``, ``run_id``, ``planned_seeds`` and its metrics (what
        :func:`unpaired.results.statistics.summarize` takes)."""
        planned = {variant: len(self.of_variant(variant)) for variant in self.variants}
        compared = [run for run in self.runs if run.finished and run.result is not None and not run.scored_elsewhere]
        finished = [run.result for run in compared if run.result is not None]
        rows = [
            {
                "variant": run.variant,
                "seed": run.seed,
                "run_id": run.run_id,
                "planned_seeds": planned[run.variant],
                "scoring_failed": bool(run.result.scoring_problems),
                "epochs": run.result.epochs,
                "training_seconds": run.result.seconds,
                "run_folder": folder_name(run.folder.path),
                "mlflow_run_id": run.mlflow_run_id(),
                **run.result.metrics,
            }
            for run in compared
            if run.result is not None
        ]
        table = pd.DataFrame(rows, columns=None if rows else ["variant", "seed", "run_id", "planned_seeds", "scoring_failed"])
        return describe_scores(table, [result.scoring for result in finished], [result.train_data for result in finished])

    def grid_levels(self) -> dict[str, dict[str, str]]:
        """Each variant's level of every grid axis (see :func:`unpaired.results.analysis.grid_levels`)."""
        study = self.index.get("study") or {}  # recorded since overrides: older folders give no factorial analysis
        entries = [(entry["variant"], entry.get("overrides", {})) for entry in self.index["runs"]]
        return grid_levels(study.get("grid") or {}, len(study.get("variants") or {}), entries)

    def to_compare(self) -> RunsToCompare:
        """Its finished runs as ``compare`` takes them, with every note on what is left out."""
        notes = [self.index_problem, *self.left_out] if self.index_problem else list(self.left_out)
        notes += unfinished_line(self.unfinished_variants())
        return RunsToCompare(self.name, self.baseline, self.metrics(), notes, self.index.get("metric"), self.grid_levels())

    def unfinished_variants(self) -> list[str]:
        """The variants none of whose runs has finished, each with its runs' states: ``plain (2 pending)``."""
        unfinished = []
        for variant in self.variants:
            states = Counter(run.status for run in self.of_variant(variant))
            if states and "finished" not in states:
                unfinished.append(f"{variant} ({', '.join(f'{n} {state}' for state, n in states.items())})")
        return unfinished

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        return counts


def read_study_results(out: Path, now: CurrentPlan | None = None) -> StudyResults:
    """Read the study output folder ``out`` (raises ``UsageError`` when it has no ``study.json``). Only the runs the
    index lists, scored under the evaluation it records, are compared; the rest are named in ``left_out``. With ``now``
    (the study as the installed plugins plan it, see :mod:`unpaired.results.current_plan`), its runs and evaluations
    replace what the index recorded: runs trained before a default changed are left out, before the next ``run``."""
    index, index_problem = read_index(out)
    if now is not None:
        index = _as_planned_now(index, now, Path(out))
    runs, problems = [], []
    for entry in index["runs"]:
        folder = RunFolder(Path(out) / entry["folder"])
        try:
            result = folder.read_result()
        except CorruptFileError as error:
            result = None
            problems.append(str(error))
        status = folder.status(entry["run_id"], evaluation=entry.get("evaluation"))
        runs.append(
            RunRecord(
                entry["variant"],
                int(entry["seed"]),
                entry["run_id"],
                folder,
                entry.get("overrides", {}),
                "finished" if status in ("done", "stale", "rescore", "score-failed") else status,
                result if result is not None and result.run_id == entry["run_id"] else None,
                status == "rescore",
            )
        )
    unchecked = [now.unchecked] if now is not None and now.unchecked else []
    return StudyResults(Path(out), index, runs, problems, [*unchecked, *_left_out(out, runs)], index_problem)


def read_as_planned_now(out: Path, registry: Registry) -> StudyResults:
    """The study output folder ``out`` read as the study it records (``study.json``) is planned now, with the installed
    plugins: what ``compare`` and the report of a folder show (see :func:`read_study_results`)."""
    index, index_problem = read_index(out)
    now, note = (None, None) if index_problem else replan(index.get("study"), registry, str(Path(out) / INDEX))
    results = read_study_results(out, now)
    results.left_out[:0] = [note] if note else []
    return results


def _as_planned_now(index: dict[str, Any], now: CurrentPlan, out: Path) -> dict[str, Any]:
    """``index`` with the study, its variants, seeds, baseline, ranking score and runs as ``now`` plans them. A run the index
    lists keeps its folder; another goes where the study would put it (or where that very run already is)."""
    planned = planned_entries(now.study, out, now.evaluations)
    recorded = {entry["run_id"]: entry for entry in index["runs"]}
    for entry, run in zip(planned["runs"], now.study.runs):
        found = recorded.get(run.run_id)
        if found is not None:
            entry["folder"] = found["folder"]
        elif (moved := moved_run(out, run)) is not None:
            entry["folder"] = str(moved.path.relative_to(out))
        if now.unchecked is not None:
            entry["evaluation"] = (found or {}).get("evaluation")
    return {**index, **planned}


def _left_out(out: Path, runs: list[RunRecord]) -> list[str]:
    others = unplanned_runs(out, {run.run_id for run in runs})
    return left_out_lines(sum(run.scored_elsewhere for run in runs), len(others))
