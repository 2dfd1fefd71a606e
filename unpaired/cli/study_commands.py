"""Commands about studies: validate, plan, run, compare, report, score, schema."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from unpaired.columns import aligned
from unpaired.config.schema import study_json_schema
from unpaired.config.spec import SpecError
from unpaired.config.study import PlannedRun, Study, TrackingConfig, load_study
from unpaired.errors import InputError, UnpairedError, UsageError
from unpaired.cli.plugins import registry as plugin_registry
from unpaired.results.study_folder import STUDY_FILE_SUFFIXES, find_study_folder, output_folder
from unpaired.storage.run_folder import RunFolder

if TYPE_CHECKING:
    from unpaired.plugin_api.data import UnpairedData
    from unpaired.results.compare import RunsToCompare


def _describe(study: Study) -> str:
    variants, seeds = len(study.variant_names), len(study.spec.seeds)
    ranked = f", ranked by {study.metric}" if study.metric else ""
    return f"{variants} variant(s) x {seeds} seed(s) = {len(study.runs)} run(s), baseline {study.baseline!r}{ranked}"


def _print_study_notes(study: Study) -> None:
    """What the study's scores will not say although its spec may seem to ask for it: the ranking score, the best epoch."""
    for note in (study.ranking_note, study.best_epoch_note):
        if note:
            print(f"note: {note}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a study file completely without training anything."""
    from unpaired.execution.runner import check_datasets, check_networks, open_datasets

    study = load_study(args.study, plugin_registry(), args.overrides)
    datasets = open_datasets(study)
    broken, unopened = check_datasets(study, datasets)  # the data is opened and counted too
    broken += check_networks(study, datasets)  # and the networks tried at its image size
    if broken:
        raise SpecError(args.study, broken)
    for line in [*study.execution_set_aside, *unopened, *_devices_missing_here(study)]:
        print(f"warning: {line}", file=sys.stderr)
    _print_study_notes(study)
    print(f"{args.study}: valid: {_describe(study)}" + (" (its data not checked)" if unopened else ""))
    return 0


def _devices_missing_here(study: Study) -> list[str]:
    """A line for each ``train.device`` of the study that this machine lacks: ``run`` here would stop before training,
    but the machines of a cluster may have it."""
    from unpaired.devices import DeviceError, pick_device

    missing = []
    for device in dict.fromkeys(run.resolved.train.device for run in study.runs):
        try:
            pick_device(device)
        except DeviceError as error:
            missing.append(f"{error}: `unpaired run` on this machine would stop before training (a cluster's machines may have it)")
    return missing


def cmd_plan(args: argparse.Namespace) -> int:
    """Show every run of a study with its overrides, id, steps and state on disk, and finished runs it no longer has."""
    from unpaired.evaluation.features import expected_evaluations
    from unpaired.execution.runner import open_datasets, select_runs, steps_per_run
    from unpaired.results.time_left import RunSoFar, time_left_line

    study = load_study(args.study, plugin_registry(), args.overrides)
    out, runs = output_folder(study, args.out), select_runs(study, args.only, args.seeds)
    datasets = open_datasets(study)
    steps, unchecked = steps_per_run(study, datasets), None
    try:
        evaluations = expected_evaluations(runs, load=False)
    except UnpairedError as error:  # plan still shows what it can; run stops on this before training
        evaluations, unchecked = {}, f"scores not checked against the study's evaluation: {error}"
    rows = [("variant", "seed", "run id", "steps", "status", "overrides")]
    threads = _thread_differences(study, out, args.jobs or study.spec.execution.get("jobs") or 1)
    so_far: list[RunSoFar] = []
    for run in runs:
        overrides = ", ".join(f"{k}={v}" for k, v in run.overrides.items()) or "(base)"
        count = steps[run.run_id]
        status, history = _plan_status(run, out, evaluations.get(run.run_id), datasets[run.run_id], threads.get(run.run_id))
        if isinstance(count, int):
            so_far.append(RunSoFar(run.variant, count, run.resolved.train.total_epochs, history))
        rows.append((run.variant, str(run.seed), run.run_id, str(count) if isinstance(count, int) else "?", status, overrides))
    for line in aligned(rows):
        print(line)
    for reason in dict.fromkeys(v for v in steps.values() if isinstance(v, str)):
        print(f"steps unknown: {reason}")
    if left := time_left_line(so_far, unknown=len(runs) - len(so_far)):
        print(left)
    fitted = list(dict.fromkeys(f"  {run.variant}: {line}" for run in runs for line in run.resolved.fitted))
    for line in (["\nchosen by the method to fit the other components:", *fitted] if fitted else []) + _other_runs(study, out):
        print(line)
    if unchecked:
        print(unchecked)
    print(f"\n{study.spec.name}: {_describe(study)}; output folder {out}")
    return 0


def _finished_notes(run: PlannedRun, folder: RunFolder, data: UnpairedData | str) -> str:
    """What a finished run lacks, and what mends it: a final generator missing or cut short; training or scores on
    other images than ``data`` (its dataset as opened now; the reason where it cannot be) holds."""
    from unpaired.plugin_api.data import fingerprints
    from unpaired.plugin_api.metrics import method_directions

    notes = ""
    if damaged := folder.damaged_generators(method_directions(run.resolved.method.component.factory)):
        notes += f" (final generator {', '.join(damaged)} missing or damaged: `run` exports it again from the last checkpoint)"
    result = folder.read_result()
    if result is None or isinstance(data, str):
        return notes
    if result.train_data and result.train_data != fingerprints(data, "train"):
        notes += " (trained on other images than the data holds now: move its folder aside for `run` to train it again)"
    if result.scoring and result.scoring.test_data and result.scoring.test_data != fingerprints(data, "test"):
        notes += " (scored on other test images than the data holds now: `unpaired score` scores it again)"
    return notes


def _plan_status(
    run: PlannedRun, out: Path, evaluation: str | None, data: UnpairedData | str, threads: str | None
) -> tuple[str, list[dict[str, float]]]:
    """A run's state on disk as ``plan`` words it (where it stands, what changed, what mends it), and the epochs it has
    trained (its history); ``threads``: how a queued run's CPU thread count would differ from a finished seed's."""
    from unpaired.results.study_folder import moved_run, run_folder

    moved = moved_run(out, run)
    folder = moved or run_folder(out, run)
    status: str = folder.status(run.run_id, run.resolved.training_plugins(), evaluation)
    history = folder.history_so_far()
    if status in ("partial", "failed", "running") and history:
        status += f" (epoch {len(history)}/{run.resolved.train.total_epochs})"
    if status == "stale":  # which plugin changed is what decides whether to retrain (--rerun-stale)
        trained, now = folder.read_result(), run.resolved.training_plugins()
        then = {dist: version for dist, version in (trained.plugins if trained else {}).items() if dist in now}
        status += f" ({'; '.join(plugin_changes(then, now))})"
    status += f" (in {moved.path.relative_to(out)}: `run` moves it)" if moved else ""
    status += _finished_notes(run, folder, data) if status.startswith("done") else ""
    status += f" ({threads})" if threads and status in ("pending", "stale") else ""
    return status, history


def _thread_differences(study: Study, out: Path, jobs: int) -> dict[str, str]:
    """For each run that would train on this machine's CPU with another thread count than a finished seed of its variant
    used: what differs (a CPU run's numbers depend on its thread count, so the seeds would not be alike)."""
    from unpaired.devices import DeviceError, pick_device
    from unpaired.execution.local import threads_per_run
    from unpaired.results.study_folder import run_folder

    used: dict[str, dict[int, int]] = {}  # variant -> finished seed -> threads
    for run in study.runs:
        result = run_folder(out, run).read_result()
        if result is not None and result.status == "finished" and result.threads is not None:
            used.setdefault(run.variant, {})[run.seed] = result.threads
    notes, threads = {}, threads_per_run(jobs)
    for run in study.runs:
        try:
            on_cpu = pick_device(run.resolved.train.device).type == "cpu"
        except DeviceError:
            continue
        others = {seed: count for seed, count in used.get(run.variant, {}).items() if count != threads and seed != run.seed}
        if on_cpu and others:
            seeds = ", ".join(f"seed {seed} used {count}" for seed, count in sorted(others.items()))
            notes[run.run_id] = f"{threads} CPU thread{'s' if threads != 1 else ''} with --jobs {jobs}; {seeds}"
    return notes


def plugin_changes(then: dict[str, str], now: dict[str, str]) -> list[str]:
    """``unpaired-unet 0.1.0 -> 0.2.0`` for each distribution whose version differs between two runs' ``plugins``."""
    return [
        f"{dist} {then.get(dist, '(none)')} -> {now.get(dist, '(none)')}" for dist in sorted(set(then) | set(now)) if then.get(dist) != now.get(dist)
    ]


def _other_runs(study: Study, out: Path) -> list[str]:
    """One line per finished run folder in ``out`` of a run id the study no longer plans, saying what changed against
    the planned run of the same variant folder and seed: spec fields and plugin versions."""
    from unpaired.config.overrides import flatten
    from unpaired.results.study_folder import run_folder, unplanned_runs

    by_place = {(run_folder(out, run).path.parent.name, run.seed): run for run in study.runs}
    lines = []
    for folder, result in unplanned_runs(out, {run.run_id for run in study.runs}):
        try:
            spec = folder.read_spec()
        except UnpairedError:  # an unreadable spec: the run is still named, without what changed
            spec = {}
        current, changes = by_place.get((folder.path.parent.name, spec.get("train", {}).get("seed"))), []
        if current is not None:
            then, now = flatten(spec), flatten(current.resolved.as_dict())
            changes = [
                f"{key}: {then.get(key)!r} -> {now.get(key)!r}"
                for key in sorted(set(then) | set(now))
                if then.get(key) != now.get(key) and not key.startswith("eval.")
            ]
            changes += plugin_changes(result.plugins, current.resolved.plugins())
        lines.append(
            f"not planned any more: {folder.path.relative_to(out)} (finished, run {result.run_id})" + (f": {'; '.join(changes)}" if changes else "")
        )
    if lines:
        lines.insert(0, "\nfinished runs this study no longer plans (compare and the report leave them out):")
    return lines


def cmd_run(args: argparse.Namespace) -> int:
    """Train every pending run of a study; finished runs are skipped, interrupted ones resume."""
    from tqdm import tqdm

    from unpaired.cli.executor_options import chosen_execution
    from unpaired.execution.runner import run_study, select_runs
    from unpaired.reporting import ReportWriter

    registry = plugin_registry()
    study = load_study(args.study, registry, args.overrides)
    out = output_folder(study, args.out)
    runs = select_runs(study, args.only, args.seeds)
    print(f"{study.spec.name}: {_describe(study)}; {len(runs)} selected; output folder {out}", file=sys.stderr)
    _print_study_notes(study)
    execution = chosen_execution(args, study)
    with registry.listening(ReportWriter(registry, study.metric)):  # report.html when the study ends
        summary = run_study(
            study,
            out,
            registry,
            runs,
            show_progress=not args.quiet,
            announce=lambda line: tqdm.write(line, file=sys.stderr),
            execution=execution,
            rerun_stale=args.rerun_stale,
        )
    print(summary)
    _print_ranking(study, out)
    return summary.exit_code


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of study files."""
    print(json.dumps(study_json_schema(plugin_registry()), indent=1))
    return 0


def _run_folders(target: Path) -> list[RunFolder]:
    """Run folders that ended, named by a run folder, a study output folder, or a study file (its default output folder)."""
    from unpaired.results.study_folder import is_study_folder, read_index

    if RunFolder.holds_run(target):
        return [RunFolder(target)]
    if target.is_file():
        target = output_folder(load_study(target, plugin_registry()))
    if not is_study_folder(target):
        raise InputError(f"{target} is neither the folder of a run that started training nor a study output folder")
    index, problem = read_index(target)
    if problem:
        print(f"note: {problem}", file=sys.stderr)
    folders = [RunFolder(target / entry["folder"]) for entry in index["runs"]]
    return [folder for folder in folders if folder.read_result() is not None]


def cmd_score(args: argparse.Namespace) -> int:
    """Score saved generators again and record the metrics."""
    from unpaired.evaluation.rescore import rescore_folder
    from unpaired.devices import gpu_algorithms, pick_device

    registry, device = plugin_registry(), pick_device(args.device, "--device")
    folders = _run_folders(Path(args.target))
    if not folders:
        raise UsageError(f"{args.target} holds no run that has finished yet: nothing to score")
    failed, tracked = 0, False
    for folder in folders:  # one run that cannot be scored does not stop the others
        try:
            with gpu_algorithms(deterministic=False):  # inference only: cuDNN may autotune
                scores = rescore_folder(folder, registry, device, args.epoch)
        except UnpairedError as error:
            print(f"error: {folder}: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{folder}: " + "  ".join(f"{k} {v:.4f}" for k, v in scores.values.items() if not k.endswith("_std")))
        tracked |= scores.tracked
        if scores.problems:
            print(f"error: {folder}: the scoring failed: {'; '.join(scores.problems)}", file=sys.stderr)
            failed += 1
    if tracked:
        print("note: MLflow still holds the earlier scores: the study's next `unpaired run` logs these", file=sys.stderr)
    return 1 if failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Rank a study's variants by a metric over seeds, from its MLflow runs or its output folder."""
    from unpaired.results.compare import compare_runs, not_scored_so, plot
    from unpaired.results.scores import ranking_score
    from unpaired.results.tables import answer_tables, render, runs_table

    compared = _runs_to_compare(args.study)
    name, runs = compared.name, compared.runs
    for line in compared.left_out:
        print(f"note: {line}", file=sys.stderr)
    if runs.empty:
        raise UsageError(f"study {name!r} has no finished runs " + ("to compare: the notes above say why" if compared.left_out else "yet"))
    metric = ranking_score(runs, args.metric or compared.ranked_by)
    if metric is None:
        raise UsageError(f"study {name!r} has finished runs but no scores to compare (eval.metrics: [] scores nothing); see `unpaired plan`")
    analysis = compare_runs(runs, metric, compared.baseline, compared.levels)
    if note := not_scored_so(runs, metric):
        print(f"note: {note}", file=sys.stderr)
    print(render(analysis, [*answer_tables(analysis, runs), runs_table(runs)], args.format), end="")
    if args.plot:
        plot(analysis.table, runs, metric, Path(args.plot))
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _runs_to_compare(named: str) -> RunsToCompare:
    """The finished runs of the study named by its file, output folder or MLflow name, as the study is planned now: from
    its output folder (named so, or its tracking is off), else from MLflow."""
    from unpaired.results.current_plan import current_plan, replan
    from unpaired.tracking.store import tracking_uri
    from unpaired.results.study_folder import is_study_folder
    from unpaired.results.study_results import read_as_planned_now, read_study_results
    from unpaired.tracking.reading import recorded_study, tracked_results

    target = Path(named)
    registry = plugin_registry()
    study = None
    if target.suffix.lower() in STUDY_FILE_SUFFIXES and target.is_file():
        study = load_study(target, registry, inputs=False)  # results only: the data may be elsewhere
    if is_study_folder(target):
        return read_as_planned_now(target, registry).to_compare()
    if study is not None and not study.spec.tracking.enabled:  # the run folders: no MLflow
        return read_study_results(find_study_folder(named, registry), current_plan(study)).to_compare()
    if study is not None:
        return tracked_results(study.spec.name, tracking_uri(study.spec.tracking.uri), study.spec.tracking.timeout, current_plan(study), [])
    uri, timeout = tracking_uri(None), TrackingConfig().timeout
    try:
        now, note = replan(recorded_study(named, uri, timeout), registry, f"the MLflow parent run of study {named!r}")
        return tracked_results(named, uri, timeout, now, [note] if note else [])
    except UnpairedError as error:
        if target.is_file():  # most likely meant as a study file: say why it is not one
            raise InputError(
                f"{named} is a file but not a study file (those end in {', '.join(STUDY_FILE_SUFFIXES)}), and as a study's MLflow name: {error}"
            ) from error
        if target.is_dir():  # most likely meant as a folder: say why it is not one to compare
            raise InputError(
                f"{named} is a folder but not a study output folder (it has no study.json; a folder of `unpaired train` holds "
                f"one run, not a study), and as a study's MLflow name: {error}"
            ) from error
        raise


def _print_ranking(study: Study, out: Path) -> None:
    """The answer and the ranking of the study's finished runs, as ``compare`` prints them (nothing before a run has
    the study's score)."""
    from unpaired.results.compare import compare_runs
    from unpaired.results.study_results import read_study_results
    from unpaired.results.tables import answer_tables, render

    results = read_study_results(out)
    runs, metric = results.metrics(), study.metric
    if metric is None or metric not in runs.columns or not runs[metric].notna().any():
        return
    analysis = compare_runs(runs, metric, results.baseline, results.grid_levels())
    print("\n" + render(analysis, answer_tables(analysis, runs), "table"), end="")


def cmd_report(args: argparse.Namespace) -> int:
    """Write the study report (HTML or Markdown) from the study's output folder."""
    from unpaired.reporting import write_report
    from unpaired.results.study_folder import read_index
    from unpaired.devices import pick_device
    from unpaired.storage.files import check_makeable_folder

    out = find_study_folder(args.study, plugin_registry())
    fmt = args.format or ("markdown" if args.out and Path(args.out).suffix.lower() == ".md" else "html")
    metric = args.metric or read_index(out)[0].get("metric")
    target = Path(args.out) if args.out else None
    if target is not None:
        check_makeable_folder(target.parent, f"--out {target}: its folder")
    path = write_report(out, plugin_registry(), target, fmt, metric, args.seed, pick_device(args.device, "--device"), args.images)
    print(f"report written to {path}")
    return 0
