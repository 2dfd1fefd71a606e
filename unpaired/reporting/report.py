"""What a study report says, gathered from the study's output folder: facts, statistics, figures, differences, failures."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from unpaired.config.overrides import flatten
from unpaired.config.spec import RUNTIME_ONLY_FIELDS
from unpaired.errors import UsageError
from unpaired.plugin_api.registry import Registry
from unpaired.reporting.comparison import VisualComparison, visual_comparison
from unpaired.reporting.figures import metric_plot, training_curves
from unpaired.results.compare import compare_runs, not_scored_so
from unpaired.results.statistics import ALPHA, CONFIDENCE, RUN_COLUMNS
from unpaired.results.study_results import StudyResults
from unpaired.results.scores import heading, metric_title, ranking_score
from unpaired.results.tables import Table, answer_tables, ranking, runs_table

IGNORED_DIFFERENCES = {"train.seed", *(f"train.{name}" for name in RUNTIME_ONLY_FIELDS)}


@dataclass
class Report:
    """Everything a rendered report shows, in order."""

    name: str
    description: str
    question: str
    facts: list[tuple[str, str]]
    answer: list[str]
    """The answer in words (:class:`unpaired.results.analysis.Analysis`), as ``compare`` prints it."""
    ranking: list[Table]
    """The ranked variants by the study's score, then the grid's factorial analysis (``compare``'s tables)."""
    other_scores: list[Table]
    runs: list[Table]
    """Every finished run, then each variant's size and compute."""
    metric_plot: bytes | None
    curves: tuple[bytes, list[str]] | None
    """The training curves' PNG and the titles of its panels."""
    comparison: VisualComparison | None
    differences: dict[str, list[tuple[str, Any, Any]]]
    """Per variant (but the baseline): ``(dotted path, baseline value, its value)`` for each field that differs."""
    failures: list[tuple[str, int, str | None]]
    """``(variant, seed, error)`` of every failed run."""
    incomplete: list[str]
    notes: list[str] = field(default_factory=list)


def build_report(
    results: StudyResults,
    registry: Registry,
    metric: str | None = None,
    seed: int | None = None,
    device: torch.device | None = None,
    images: list[int] | None = None,
) -> Report:
    """Gather a report of ``results``, ranking by ``metric`` (default: the study's ranking score, else the first score
    the runs have); the visual comparison shows the test ``images`` (default:
    spread evenly over the test split) translated by the generators of ``seed`` (default: the study's first seed),
    run on ``device`` (default: the CPU)."""
    runs = results.metrics()
    notes = [f"Unreadable, so counted as not finished: {problem}" for problem in results.problems]
    notes = [results.index_problem, *notes] if results.index_problem else notes
    notes += [line[0].upper() + line[1:] + "." for line in results.left_out]
    scored = [column for column in runs.columns if column not in RUN_COLUMNS]
    metric = ranking_score(runs, metric or results.index.get("metric"))
    if metric is not None and metric not in runs.columns and scored:  # a misspelt --metric, not a study without scores
        raise UsageError(f"no metric {metric!r} in the finished runs; available: {', '.join(sorted(scored))}")
    if metric is None or metric not in runs.columns:
        notes.append(f"No finished run has {metric or 'a score'} yet" + (" (eval.metrics: [] switches scoring off)." if not runs.empty else "."))
    analysis = compare_runs(runs, metric, results.baseline, results.grid_levels()) if metric is not None and metric in runs.columns else None
    others = analysis.others if analysis else {}  # with no score to rank by (checked above) there is none
    notes += [note for name in [metric, *others] if name is not None and (note := not_scored_so(runs, name))]
    seeds = results.index.get("seeds") or sorted({run.seed for run in results.runs})
    if seed is not None and seed not in seeds:
        raise UsageError(f"seed {seed} is not one of the study's seeds ({', '.join(map(str, seeds))})")
    seed = seeds[0] if seed is None else seed
    comparison = visual_comparison(results, registry, seed, device or torch.device("cpu"), images)
    notes += [f"Left out of the training curves: {problem}." for run in results.runs if (problem := run.history_problem())]
    return Report(
        name=results.name,
        description=results.index.get("description", ""),
        question=results.index.get("question", ""),
        facts=_facts(results),
        answer=analysis.answer if analysis else [],
        ranking=answer_tables(analysis, runs) if analysis else [],
        other_scores=[ranking(table, heading(runs, name), metric_title(name, runs)) for name, table in others.items()],
        runs=[runs_table(runs), _compute_table(results)] if not runs.empty else [],
        metric_plot=metric_plot(analysis.table, runs, analysis.metric) if analysis else None,
        curves=training_curves(results, registry),
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


def _compute_table(results: StudyResults) -> Table:
    """Per variant: its networks' parameters and what a run of it cost (mean over its finished runs)."""
    rows = []
    for variant in results.variants:
        ended = [run.result for run in results.of_variant(variant) if run.finished and run.result is not None]
        if not ended:
            continue
        parameters = ended[-1].parameters
        seconds, steps = sum(r.seconds for r in ended) / len(ended), sum(r.steps for r in ended) / len(ended)
        rows.append(
            [
                variant,
                _count(sum(parameters.values())) if parameters else "not recorded",
                ", ".join(f"{name} {_count(n)}" for name, n in parameters.items()),
                f"{seconds:.0f} s" + (f" ({steps:.0f} steps, {seconds / steps:.3f} s/step)" if steps else ""),
                ", ".join(sorted({r.device for r in ended if r.device})),
            ]
        )
    header = ["variant", "parameters", "by network", "training time per run (mean)", "device"]
    return Table("Size and compute per variant", header, rows)


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else (f"{n / 1e3:.1f} k" if n >= 1e3 else str(n))


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
            f"{CONFIDENCE:.0%} CIs (Student's t); Welch's t-test vs the baseline, its p-values and Δ intervals Bonferroni-adjusted "
            f"over the variants, α = {ALPHA}; for a grid, a type II ANOVA (statsmodels)",
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
