"""A study as the plugins installed now plan it: which finished runs a comparison may count.

A finished run counts when its run id is one the study plans now and its scores carry the evaluation
the study asks for now. After a plugin's default or version changed, the runs trained before are
another configuration (or were scored otherwise): compare and the report leave them out, saying so in
one line, whether the study is named by its file, its output folder or its MLflow name. The last two
record the study as it was run (``study.json``, the MLflow parent's ``unpaired_study.json``), and it
is planned again here with the plugins installed now.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from unpaired.config.study import Study, plan_study
from unpaired.config.spec import SpecError
from unpaired.errors import UnpairedError
from unpaired.evaluation.features import expected_evaluations
from unpaired.plugin_api.registry import Registry

RECORDED_STUDY = "unpaired_study.json"
"""The artifact of a study's MLflow parent run holding the study as resolved (what ``study.json`` records as ``study``)."""


@dataclass(frozen=True)
class CurrentPlan:
    """A study planned now, with the evaluation identity each of its runs' scores must carry."""

    study: Study
    evaluations: dict[str, str]
    """Run id -> the evaluation its scores must carry (runs that score nothing have none)."""
    unchecked: str | None = None
    """Why the evaluations could not be known (a feature extractor failed to load): only run ids are checked then."""

    @cached_property
    def run_ids(self) -> set[str]:
        return {run.run_id for run in self.study.runs}

    def counts(self, run_id: str, evaluation: str | None) -> bool:
        """Whether a finished run with ``run_id`` whose scores carry ``evaluation`` is one of this study's, scored so."""
        if run_id not in self.run_ids:
            return False
        return self.unchecked is not None or run_id not in self.evaluations or self.evaluations[run_id] == evaluation


def current_plan(study: Study) -> CurrentPlan:
    """``study`` (planned with the installed plugins) and the evaluation its runs need (loading only the feature
    extractors that cannot say their identity unbuilt)."""
    try:
        return CurrentPlan(study, expected_evaluations(study.runs, load=False))
    except UnpairedError as error:
        return CurrentPlan(study, {}, f"the scores are not checked against the study's evaluation: {error}")


def replan(recorded: Any, registry: Registry, source: str) -> tuple[CurrentPlan | None, str | None]:
    """The study recorded in ``source`` planned again with the installed plugins; or None and why it cannot be (nothing
    recorded, by an older version; or it no longer validates): then the runs are compared as they were trained."""
    if recorded is None:
        return None, f"{source} records no study (an older unpaired wrote it): runs of configurations changed since are not told apart"
    try:
        return current_plan(plan_study(recorded, registry, source, inputs=False)), None
    except SpecError as error:
        problems = "; ".join(f"{path}: {message}" if path else message for path, message in error.problems)
        return None, (
            f"the study recorded in {source} is no longer valid with the installed plugins ({problems}): its runs are compared as they were trained"
        )


def left_out_lines(scored_otherwise: int, not_planned: int) -> list[str]:
    """The notes on finished runs a comparison leaves out: those scored under another evaluation than the study's, and
    those of configurations it no longer plans (none for a count of 0)."""
    lines = []
    if scored_otherwise:
        lines.append(
            f"{scored_otherwise} finished run(s) scored under another evaluation than the study's (metrics or feature "
            "extractor changed) are left out: `unpaired run` scores them again"
        )
    if not_planned:
        lines.append(f"{not_planned} finished run(s) of configurations the study no longer plans are left out (`unpaired plan` says what changed)")
    return lines


def unfinished_line(variants: list[str], where: str = "") -> list[str]:
    """The note on planned variants without a finished run (``where``: in MLflow, say), each named with what is known of
    its runs, which a comparison cannot show; none when there are none."""
    if not variants:
        return []
    return [f"no finished run{where} yet, so not compared: {', '.join(variants)}; `unpaired plan` shows where their runs stand"]
