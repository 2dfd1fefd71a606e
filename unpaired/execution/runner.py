"""Running a study: which runs are left, checks before training, handing them to its executor, and what became of them.

Everything a run needs to continue lives in its folder, so the study itself keeps no
state: rerunning the same command after a crash (even kill -9) skips finished runs,
resumes interrupted ones from their last checkpoint and starts the rest. Whoever follows
the study (the MLflow tracker, ...) does so through the lifecycle hooks.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Callable, Sequence
from pathlib import Path


from unpaired.config.study import PlannedRun, Study
from unpaired.errors import StopRequested, UnpairedError, UsageError, listed
from unpaired.evaluation.features import check_extractors, expected_evaluations
from unpaired.execution.jobs import make_jobs, train_job
from unpaired.execution.worker import PROCESS_WORKERS
from unpaired.plugin_api.executors import Executor, ExecutorContext, RunJob
from unpaired.plugin_api.components import Choice
from unpaired.plugin_api.data import DataError, UnpairedData
from unpaired.plugin_api.metrics import method_directions
from unpaired.plugin_api.registry import Registry
from unpaired.results.study_folder import moved_run, run_folder, run_info, study_info, write_index
from unpaired.signals import deferred_signals, stop_on_signals, stop_requested
from unpaired.storage.lifecycle import TO_TRAIN, RunOutcome, StudySummary
from unpaired.storage.run_folder import RunFolder
from unpaired.training.contracts import ContractError, check_data, size_problem, too_few_test_images


class DataFault(str):
    """Why a dataset cannot be used when the data itself is at fault (it raised :class:`DataError`: no readable images,
    images too small for the crop): ``validate`` refuses it, where it only warns of data it cannot open here."""


def open_datasets(study: Study) -> dict[str, UnpairedData | str]:
    """Each run's dataset (by run id), built once per distinct dataset; the reason instead where it cannot be opened
    here (a :class:`DataFault` where the data is at fault)."""
    by_data: dict[str, UnpairedData | str] = {}
    for run in study.runs:
        key = json.dumps(run.resolved.data.as_dict(), sort_keys=True)
        if key not in by_data:
            try:
                by_data[key] = run.resolved.data.build()
            except DataError as error:
                by_data[key] = DataFault(error)
            except (UnpairedError, OSError) as error:
                by_data[key] = str(error)
    return {run.run_id: by_data[json.dumps(run.resolved.data.as_dict(), sort_keys=True)] for run in study.runs}


def check_datasets(study: Study, datasets: dict[str, UnpairedData | str]) -> tuple[list[tuple[str, str]], list[str]]:
    """``(where, what)`` for each distinct dataset (:func:`open_datasets`) that is at fault (a :class:`DataFault`), breaks
    its contract (an empty split) or has too few test images for the metrics scoring it, and a line for each that
    cannot be opened here (not downloaded yet, say: training would stop on it)."""
    broken = []
    unopened = []
    checked: set[int] = set()  # datasets, once each
    scored: set[tuple[int, tuple[str, ...]]] = set()  # (dataset, metric names), once each
    for run in study.runs:
        data = datasets[run.run_id]
        if id(data) not in checked:
            checked.add(id(data))
            if isinstance(data, DataFault):
                broken.append((f"variant[{run.variant}].data", str(data)))
            elif not isinstance(data, UnpairedData):
                unopened.append(f"variant[{run.variant}].data cannot be opened here, so it was not checked: {data}")
            else:
                try:
                    check_data(data, run.resolved.data)
                except ContractError as error:
                    broken.append((f"variant[{run.variant}].data", str(error)))
        metrics = tuple(choice.component.name for choice in run.resolved.eval.metrics)
        if isinstance(data, UnpairedData) and (id(data), metrics) not in scored:
            scored.add((id(data), metrics))
            if problem := too_few_test_images(data, run.resolved.eval.build_metrics()):
                broken.append((f"variant[{run.variant}].eval.metrics", problem))
    return broken, unopened


def check_networks(study: Study, datasets: dict[str, UnpairedData | str]) -> list[tuple[str, str]]:
    """``(where, what)`` for each generator and discriminator that cannot take the images of the dataset it trains on
    (:func:`open_datasets`; those that cannot be opened here are not checked), once for the variants that share the
    problem: see :func:`unpaired.training.contracts.size_problem`."""
    checked: set[str] = set()
    found: dict[tuple[str, str], list[str]] = {}  # (component, why) -> the variants with it
    for run in study.runs:
        data, variant = datasets[run.run_id], run.resolved
        if not isinstance(data, UnpairedData):
            continue
        parts = (variant.generator, variant.generator_norm, variant.discriminator, variant.discriminator_norm)
        key = json.dumps([[part.as_dict() for part in parts], data.transform.crop_size], sort_keys=True)
        if key not in checked:
            checked.add(key)
            if problem := size_problem(variant, data.transform.crop_size):
                found.setdefault(problem, []).append(run.variant)
    return [
        (f"variant[{variants[0]}].{kind}", why + (f" (the same in variants {listed(variants[1:])})" if len(variants) > 1 else ""))
        for (kind, why), variants in found.items()
    ]


def steps_per_run(study: Study, datasets: dict[str, UnpairedData | str]) -> dict[str, int | str]:
    """Training steps of each run (by run id), from its dataset (:func:`open_datasets`); the reason where it cannot be opened."""
    steps: dict[str, int | str] = {}
    for run in study.runs:
        data, train = datasets[run.run_id], run.resolved.train
        steps[run.run_id] = train.steps_per_epoch(data.train_length) * train.total_epochs if isinstance(data, UnpairedData) else data
    return steps


def select_runs(study: Study, only: Sequence[str] | None, seeds: Sequence[int] | None) -> list[PlannedRun]:
    """The runs of the named variants and seeds (all when None); unknown names or seeds raise :class:`UsageError`."""
    names = study.variant_names
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise UsageError(f"no variant named {', '.join(map(repr, unknown))} in study {study.spec.name!r}; the variants are {', '.join(names)}")
    missing = [s for s in seeds or [] if s not in study.spec.seeds]
    if missing:
        raise UsageError(f"seed(s) {missing} are not in study {study.spec.name!r}, whose seeds are {study.spec.seeds}")
    return [r for r in study.runs if (not only or r.variant in only) and (seeds is None or r.seed in seeds)]


def run_study(
    study: Study,
    out: Path,
    registry: Registry,
    runs: list[PlannedRun],
    show_progress: bool = True,
    announce: Callable[[str], None] = print,
    execution: Choice | None = None,
    rerun_stale: bool = False,
) -> StudySummary:
    """Train every run of ``runs`` that is not done and return what became of each.

    Before any training the feature extractors of the runs to train or score load, the executor starts
    (``execution``, an ``executor`` component with its settings; default the study's ``execution``) and
    the study's listeners (see the ``unpaired_study_listeners`` hook) start. A finished run's missing
    or cut-short final generators are exported again from its last checkpoint. A failing run is recorded and the others go on.
    SIGINT or SIGTERM stops the study: running runs checkpoint, queued ones are not started, and the
    summary says so (``summary.stopped_by``); the listeners always hear of the end.
    """
    out = Path(out)
    summary = StudySummary()
    _gather_moved(runs, out, announce)
    evaluations = expected_evaluations(study.runs)  # of every run: the index records them for compare and the report
    todo = _runs_to_train(runs, out, evaluations, rerun_stale, summary, announce)
    check_extractors(todo)
    listeners = [listener for found in registry.hook.unpaired_study_listeners(study=study_info(study, out)) for listener in found]
    with stop_on_signals():
        context = ExecutorContext(out, announce, show_progress, lambda job: train_job(job, registry, show_progress=show_progress), PROCESS_WORKERS)
        executor: Executor = (execution or study.execution).build(context)
        try:
            with registry.listening(*listeners):
                _run(
                    study, out, evaluations, registry, executor, make_jobs(todo, lambda run: run_folder(out, run).path, listeners), summary, announce
                )
        finally:
            executor.close()
    return summary


def _gather_moved(runs: list[PlannedRun], out: Path, announce: Callable[[str], None]) -> None:
    """Move each run found under another variant name (the same run id) to where the study puts it, so finished work
    is found, and resumed work resumes, whatever the variant is called now. A folder being trained stays."""
    for run in runs:
        moved = moved_run(out, run)
        if moved is None or moved.is_leased():
            continue
        target = run_folder(out, run).path
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # another invocation moved it first
            moved.path.rename(target)
            with contextlib.suppress(OSError):  # the old variant folder, when nothing else is left in it
                moved.path.parent.rmdir()
            announce(f"{moved} holds the same run as {run.variant} seed {run.seed} (run id {run.run_id}): moved to {target}")


def _runs_to_train(
    runs: list[PlannedRun], out: Path, evaluations: dict[str, str], rerun_stale: bool, summary: StudySummary, announce: Callable[[str], None]
) -> list[PlannedRun]:
    """The runs not done yet, and the finished ones to score again (scores missing or made under another evaluation
    than ``evaluations`` says: they train nothing). A run whose scores are NaN or infinite counts as failed; a stale one
    (finished by other versions of its plugins) is skipped and noted, or, with ``rerun_stale``, its folder is moved
    aside and it trains again."""
    todo = []
    stale = []
    rescore = []
    for run in runs:
        folder = run_folder(out, run)
        status = folder.status(run.run_id, run.resolved.training_plugins(), evaluations.get(run.run_id))
        if status == "stale" and rerun_stale:
            announce(f"{run.variant} seed {run.seed} was trained by other plugin versions: moved to {folder.retire()}, training again")
            status = "pending"
        if status in ("done", "stale", "score-failed"):
            _restore_generators(run, folder, announce)
        if status in ("done", "stale"):
            summary.skipped.append(run_info(out, run))
            stale += [run] if status == "stale" else []
        elif status == "score-failed":
            result = folder.read_result()
            summary.failed.append((run_info(out, run), f"the scoring failed: {'; '.join(result.scoring_problems if result else [])}"))
        elif status in TO_TRAIN:
            todo.append(run)
            rescore += [run] if status == "rescore" else []
    if stale:
        summary.notes.append(
            f"{len(stale)} finished run(s) were trained by other versions of their plugins than those installed "
            "(`plan` marks them stale); `unpaired run --rerun-stale` trains them again"
        )
    if rescore:
        announce(
            f"{len(rescore)} finished run(s) have no scores of this study's evaluation (metrics or feature extractor changed): "
            "they are scored again, not trained"
        )
    return todo


def _restore_generators(run: PlannedRun, folder: RunFolder, announce: Callable[[str], None]) -> None:
    """Export a finished run's missing or cut-short final generators again from its last checkpoint (the same weights),
    saying so; when that cannot be done, say what to do instead (the study goes on)."""
    result = folder.read_result()
    if result is None:
        return
    mended = folder.mend_generators(method_directions(run.resolved.method.component.factory), result.epochs)
    if mended:
        announce(f"{'' if mended[0] else 'warning: '}{run.variant} seed {run.seed}: {mended[1]}")


def _run(
    study: Study,
    out: Path,
    evaluations: dict[str, str],
    registry: Registry,
    executor: Executor,
    jobs: list[RunJob],
    summary: StudySummary,
    announce: Callable[[str], None],
) -> None:
    info = study_info(study, out)
    runs = {run.run_id: run for run in info.runs}

    def collect(job: RunJob, outcome: RunOutcome) -> None:
        summary.record(runs[job.run_id], outcome)
        if outcome.outcome != "not-started":
            announce(f"{outcome.outcome}: {job.label}" + (f" ({outcome.detail})" if outcome.outcome == "busy" else ""))

    registry.hook.unpaired_on_study_start(study=info, out=out, machines=executor.machines)
    try:
        write_index(study, out, evaluations)
        executor.run(jobs, collect)
        if summary.interrupted:
            summary.stopped_by = stop_requested() or signal.SIGINT
    except StopRequested as stop:
        summary.stopped_by = stop.signum
    except BaseException as error:
        summary.aborted = f"{type(error).__name__}: {error}"
        raise
    finally:  # the listeners hear of the end however it comes (MLflow's parent run is closed)
        with deferred_signals():
            registry.hook.unpaired_on_study_end(study=info, out=out, summary=summary)
