"""Running a study: the state of each run on disk, executing what is left (optionally in parallel), a summary.

Everything a run needs to continue lives in its folder, so the study itself keeps no
state: rerunning the same command after a crash (even kill -9) skips finished runs,
resumes interrupted ones from their last checkpoint and starts the rest.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from unpaired.checkpoint import atomic_write_text, latest_checkpoint, read_result
from unpaired.data import DataError
from unpaired.engine import TrainingInterrupted, train_variant
from unpaired.compare import write_comparison
from unpaired.evaluate import build_extractor
from unpaired.registry import ComponentError, Registry, default_registry
from unpaired.spec import resolve_variant
from unpaired.study import PlannedRun, Study
from unpaired.tracking import StudyTracker, check_reachable, tracking_uri

Status = Literal["done", "partial", "failed", "pending"]


def run_status(run: PlannedRun, out: Path) -> Status:
    """``done`` (finished), ``failed`` (stopped with an error), ``partial`` (has a checkpoint) or ``pending``."""
    folder = run.folder(out)
    result = read_result(folder)
    if result and result.get("variant_id") == run.run_id and result.get("status") == "finished":
        return "done"
    if result and result.get("status") == "failed":
        return "failed"
    return "partial" if latest_checkpoint(folder / "checkpoints") else "pending"


def steps_per_run(study: Study, registry: Registry) -> dict[str, int | str]:
    """Training steps of each run (by run id); the reason instead where the data cannot be opened."""
    by_data: dict[str, int | str] = {}
    steps: dict[str, int | str] = {}
    for run in study.runs:
        data_config = run.resolved.components["data"]
        key = json.dumps(data_config, sort_keys=True)
        if key not in by_data:
            try:
                by_data[key] = registry.build("dataset", data_config).train_length
            except (DataError, ComponentError, OSError) as error:
                by_data[key] = str(error)
        length = by_data[key]
        train = run.resolved.spec.train
        steps[run.run_id] = train.steps_per_epoch(length) * train.total_epochs if isinstance(length, int) else length
    return steps


def write_index(study: Study, out: Path) -> None:
    """Record the study's runs in OUT/study.json (what compare and plan read)."""
    index = {
        "name": study.spec.name,
        "source": study.source,
        "baseline": study.baseline,
        "runs": [
            {"variant": r.variant, "seed": r.seed, "run_id": r.run_id, "variant_key": r.variant_key,
             "folder": str(r.folder(out).relative_to(out)), "overrides": r.overrides}
            for r in study.runs
        ],
    }
    atomic_write_text(Path(out) / "study.json", json.dumps(index, indent=1, default=str))


def select_runs(study: Study, only: Sequence[str] | None, seeds: Sequence[int] | None) -> list[PlannedRun]:
    """The runs of the named variants and seeds (all when None); unknown names or seeds raise ValueError."""
    names = study.variant_names
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise ValueError(f"no variant named {', '.join(map(repr, unknown))} in study {study.spec.name!r}; the variants are {', '.join(names)}")
    missing = [s for s in seeds or [] if s not in study.spec.seeds]
    if missing:
        raise ValueError(f"seed(s) {missing} are not in study {study.spec.name!r}, whose seeds are {study.spec.seeds}")
    return [r for r in study.runs if (not only or r.variant in only) and (seeds is None or r.seed in seeds)]


@dataclass
class StudySummary:
    """What one ``unpaired run`` did."""

    done: list[PlannedRun] = field(default_factory=list)
    skipped: list[PlannedRun] = field(default_factory=list)
    failed: list[tuple[PlannedRun, str]] = field(default_factory=list)
    interrupted: list[PlannedRun] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"done {len(self.done)}, failed {len(self.failed)}, skipped {len(self.skipped)} (finished earlier)"
                 + (f", interrupted {len(self.interrupted)}" if self.interrupted else "")]
        lines += [f"  FAILED {run.variant} seed {run.seed}: {error}" for run, error in self.failed]
        return "\n".join(lines)


def preflight(runs: list[PlannedRun], registry: Registry) -> None:
    """Load each FID feature extractor the runs will need, so a missing one stops the study before training."""
    configs = {json.dumps(r.resolved.components["feature_extractor"], sort_keys=True) for r in runs if r.resolved.spec.eval.fid}
    for config in sorted(configs):
        build_extractor(json.loads(config), registry, torch.device("cpu"))


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_in_worker(resolved: dict[str, Any], folder: str, child: dict[str, Any] | None, tracking: dict[str, Any] | None) -> dict[str, Any]:
    registry = default_registry()
    tracker = None
    if tracking is not None and child is not None:
        tracker = StudyTracker(**tracking)
        registry.plugin_manager.register(tracker, name="unpaired-tracking")
        tracker.child_for(Path(folder), **child, resolved=resolved)
    try:
        return train_variant(resolve_variant(resolved, registry), Path(folder), registry, show_progress=False)
    except TrainingInterrupted as error:
        return {"status": "interrupted", "error": str(error)}
    except Exception as error:
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    finally:
        if tracker is not None:
            registry.plugin_manager.unregister(tracker)


def run_study(
    study: Study,
    out: Path,
    registry: Registry,
    runs: list[PlannedRun],
    jobs: int = 1,
    show_progress: bool = True,
    announce: Callable[[str], None] = print,
) -> StudySummary:
    """Train every run of ``runs`` that is not done, tracked in MLflow unless the study says otherwise.

    Before any training: the FID extractors load and the tracking server answers. A failing run
    is recorded and the others go on. ``jobs`` > 1 trains that many runs at once in separate
    processes: spread over the visible GPUs, or on the CPU with the cores divided between them.
    """
    out = Path(out)
    summary = StudySummary()
    todo = []
    for run in runs:
        (summary.skipped if run_status(run, out) == "done" else todo).append(run)
    preflight(todo, registry)
    settings = study.spec.tracking
    uri = tracking_uri(settings.uri)
    if settings.enabled:
        check_reachable(uri)
    write_index(study, out)
    tracker = StudyTracker.start(uri, study.spec.name, study.source, study.baseline, settings.log_generators) if settings.enabled else None

    def child(run: PlannedRun) -> dict[str, Any]:
        return {"variant": run.variant, "seed": run.seed, "run_id": run.run_id, "planned_seeds": len(study.spec.seeds)}

    if tracker is not None:
        registry.plugin_manager.register(tracker, name="unpaired-tracking")
    try:
        if jobs <= 1:
            for number, run in enumerate(todo, 1):
                announce(f"[{number}/{len(todo)}] {run.variant} seed {run.seed} -> {run.folder(out)}")
                if tracker is not None:
                    tracker.child_for(run.folder(out), **child(run), resolved=run.resolved.as_dict())
                try:
                    train_variant(run.resolved, run.folder(out), registry, show_progress=show_progress)
                    summary.done.append(run)
                except TrainingInterrupted:
                    summary.interrupted.append(run)
                    break
                except Exception as error:
                    summary.failed.append((run, f"{type(error).__name__}: {error}"))
        else:
            _run_parallel(todo, out, jobs, summary, announce, child, tracker)
    finally:
        if tracker is not None:
            registry.plugin_manager.unregister(tracker)
    if tracker is not None:
        files = write_comparison(study.spec.name, uri, study.baseline, settings.metric, out)
        tracker.finish(failed=bool(summary.failed or summary.interrupted), artifacts=files)
    return summary


def _run_parallel(todo: list[PlannedRun], out: Path, jobs: int, summary: StudySummary, announce: Callable[[str], None],
                  child: Callable[[PlannedRun], dict[str, Any]], tracker: StudyTracker | None) -> None:
    gpus = torch.cuda.device_count()
    threads = 1 if gpus else max(1, (os.cpu_count() or 1) // jobs)
    tracking = None if tracker is None else {"uri": tracker.uri, "experiment_id": tracker.experiment_id,
                                             "parent_run_id": tracker.parent_run_id, "log_generators": tracker.log_generators}
    specs = []
    for number, run in enumerate(todo):
        resolved = run.resolved.as_dict()
        if gpus and resolved["train"]["device"] == "auto":
            resolved["train"]["device"] = f"cuda:{number % gpus}"
        specs.append(resolved)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
        futures = [pool.submit(_train_in_worker, spec, str(run.folder(out)), child(run), tracking) for spec, run in zip(specs, todo)]
        announce(f"training {len(todo)} run(s), {jobs} at a time")
        for run, future in zip(todo, futures):
            result = future.result()
            if result["status"] == "finished":
                summary.done.append(run)
            elif result["status"] == "interrupted":
                summary.interrupted.append(run)
            else:
                summary.failed.append((run, result["error"]))
            announce(f"{result['status']}: {run.variant} seed {run.seed}")
