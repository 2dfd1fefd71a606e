"""What a study report says, gathered from the study's output folder: facts, statistics, figures, differences, failures."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from unpaired.config.overrides import flatten
from unpaired.config.spec import RUNTIME_ONLY_FIELDS
from unpaired.errors import UsageError
from unpaired.plugin_api.registry import Registry
from unpaired.reporting.comparison import VisualComparison, visual_comparison
from unpaired.reporting.figures import metric_plot, training_curves
from unpaired.results.compare import heading, lower_is_better, not_scored_so, table_rows
from unpaired.results.statistics import ALPHA, CONFIDENCE, RUN_COLUMNS, summarize
from unpaired.results.study_results import StudyResults

METRIC_TITLES = {
    "fid_mean": "FID, final generators (mean of A→B and B→A)",
    "kid_mean": "KID, final generators (mean of A→B and B→A)",
    "fid_mean_best": "FID, best epoch during training (mean of both directions)",
}


def secondary_scores(metric: str) -> list[str]:
    """The scores reported after ``metric``, in its direction: ``kid_mean`` and ``fid_mean_best`` after ``fid_mean``,
    ``kid_a2b`` and ``fid_a2b_best`` after ``fid_a2b`` (a study of one-way methods)."""
    direction = next((d for d in ("mean", "a2b", "b2a") if metric.endswith(f"_{d}")), "mean")
    return [column for column in (f"fid_{direction}", f"kid_{direction}", f"fid_{direction}_best") if column != metric]


IGNORED_DIFFERENCES = {"train.seed", *(f"train.{name}" for name in RUNTIME_ONLY_FIELDS)}


@dataclass
class MetricSection:
    """The ranked table of one metric: its statistics and the same as text cells."""

    metric: str
    title: str
    table: pd.DataFrame
    header: list[str]
    rows: list[list[str]]


@dataclass
class Report:
    """Everything a rendered report shows, in order."""

    name: str
    description: str
    question: str
    facts: list[tuple[str, str]]
    sections: list[MetricSection]
    metric_plot: bytes | None
    curves: bytes | None
    comparison: VisualComparison | None
    differences: dict[str, list[tuple[str, Any, Any]]]
    """Per variant (but the baseline): ``(dotted path, baseline value, its value)`` for each field that differs."""
    failures: list[tuple[str, int, str | None]]
    """``(variant, seed, error)`` of every failed run."""
    incomplete: list[str]
    notes: list[str] = field(default_factory=list)


def build_report(
    results: StudyResults, registry: Registry, metric: str = "fid_mean", seed: int | None = None, device: torch.device | None = None
) -> Report:
    """Gather a report of ``results``, ranking by ``metric``; the visual comparison uses the generators of ``seed``
    (default: the study's first seed), run on ``device`` (default: the CPU)."""
    runs, notes = results.metrics(), [f"Unreadable, so counted as not finished: {problem}" for problem in results.problems]
    notes = [results.index_problem, *notes] if results.index_problem else notes
    notes += [line[0].upper() + line[1:] + "." for line in results.left_out]
    sections = [_section(runs, name, results.baseline) for name in dict.fromkeys([metric, *secondary_scores(metric)]) if name in runs.columns]
    notes += [note for section in sections if (note := not_scored_so(runs, section.metric))]
    scored = [column for column in runs.columns if column not in RUN_COLUMNS]
    if metric not in runs.columns and scored:  # a misspelt --metric, not a study without scores
        raise UsageError(f"no metric {metric!r} in the finished runs; available: {', '.join(sorted(scored))}")
    if metric not in runs.columns:
        notes.append(f"No finished run has {metric!r} yet" + (" (FID was switched off?)." if not runs.empty else "."))
    primary = sections[0] if sections and sections[0].metric == metric else None
    seeds = results.index.get("seeds") or sorted({run.seed for run in results.runs})
    if seed is not None and seed not in seeds:
        raise UsageError(f"seed {seed} is not one of the study's seeds ({', '.join(map(str, seeds))})")
    seed = seeds[0] if seed is None else seed
    comparison = visual_comparison(results, registry, seed, device or torch.device("cpu"))
    return Report(
        name=results.name,
        description=results.index.get("description", ""),
        question=results.index.get("question", ""),
        facts=_facts(results),
        sections=sections,
        metric_plot=metric_plot(primary.table, runs, metric) if primary is not None else None,
        curves=training_curves(results),
        comparison=comparison,
        differences=_differences(results),
        failures=[
            (run.variant, run.seed, run.result.error if run.result else "(its result could not be read)")
            for run in results.runs
            if run.status == "failed"
        ],
        incomplete=_incomplete(results),
        notes=notes,
    )


def _section(runs: pd.DataFrame, metric: str, baseline: str | None) -> MetricSection:
    table = summarize(runs, metric, baseline, lower_is_better(runs, metric))
    header, rows = table_rows(table, heading(runs, metric))
    extractors = ", ".join(runs.attrs.get("extractors", []))
    title = METRIC_TITLES.get(metric, metric) + (f", {extractors} features" if extractors else "")
    return MetricSection(metric, title, table, header, rows)


def _facts(results: StudyResults) -> list[tuple[str, str]]:
    ended = [run.result for run in results.runs if run.result is not None]
    plugins = sorted({f"{name} {version}" for result in ended for name, version in result.plugins.items()})
    devices = sorted({result.device for result in ended if result.device})
    seconds = sum(result.seconds for result in ended)
    counts = results.status_counts()
    order = ("finished", "failed", "running", "partial", "pending")
    states = ", ".join(f"{counts[state]} {state}" for state in order if counts.get(state))
    return [
        ("generated", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("git commit", results.index.get("git_commit") or "not recorded (not run from a git checkout)"),
        ("unpaired", results.index.get("unpaired", "?")),
        ("plugins used", ", ".join(plugins) or "none recorded yet"),
        ("devices", ", ".join(devices) or "not recorded"),
        ("total compute", f"{seconds / 3600:.2f} h ({seconds:.0f} s of training over {len(ended)} run(s))"),
        ("runs", f"{len(results.runs)} planned: {states}"),
        ("variants x seeds", f"{len(results.variants)} x {len(results.index.get('seeds', []))}, baseline {results.baseline}"),
        (
            "statistics",
            f"{CONFIDENCE:.0%} CIs (Student's t); Welch's t-test vs the baseline, Holm-Bonferroni adjusted over the variants, α = {ALPHA}",
        ),
    ]


def _differences(results: StudyResults) -> dict[str, list[tuple[str, Any, Any]]]:
    specs = {variant: next((s for run in results.of_variant(variant) if (s := run.spec())), None) for variant in results.variants}
    base = specs.get(results.baseline) if results.baseline else None
    if base is None:
        return {}
    flat_base, differences = flatten(base), {}
    for variant, spec in specs.items():
        if variant == results.baseline or spec is None:
            continue
        flat = flatten(spec)
        keys = [k for k in dict.fromkeys([*flat_base, *flat]) if k not in IGNORED_DIFFERENCES]
        differences[variant] = [(k, flat_base.get(k, "(absent)"), flat.get(k, "(absent)")) for k in keys if flat_base.get(k) != flat.get(k)]
    return differences


def _incomplete(results: StudyResults) -> list[str]:
    lines = []
    for variant in results.variants:
        runs = results.of_variant(variant)
        done = [run for run in runs if run.finished]
        if len(done) < len(runs):
            others = ", ".join(f"seed {run.seed} {run.status}" for run in runs if not run.finished)
            lines.append(f"{variant}: {len(done)} of {len(runs)} seeds finished ({others})")
    return lines


def format_value(value: Any) -> str:
    """A spec value as the report prints it."""
    if isinstance(value, float) and not math.isnan(value):
        return f"{value:g}"
    return str(value)
