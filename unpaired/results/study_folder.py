"""A study's output folder: ``study.json``, the index of its runs, beside one run folder per run."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from unpaired import __version__
from unpaired.config.study import PlannedRun, Study, load_study
from unpaired.errors import InputError, UsageError
from unpaired.plugin_api.lifecycle import RunInfo, RunResult, StudyInfo
from unpaired.plugin_api.registry import Registry
from unpaired.storage.files import CorruptFileError, atomic_write_json, check_makeable_folder
from unpaired.storage.run_folder import RunFolder

INDEX = "study.json"
REPORTS = {"html": "report.html", "markdown": "report.md"}
"""The study report's default file in the output folder, by format (Markdown's pictures go in ``report_files/``)."""


STUDY_FILE_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_PARENT = Path("runs")
"""Where a study's output folder is by default: ``runs/<study name>`` in the working directory."""


def output_folder(study: Study, out: str | Path | None = None) -> Path:
    """``out`` (``--out``), else the study's default output folder ``runs/<study name>``; :class:`InputError` when it, or
    the nearest part of its path that exists, is a file, or when it is the output folder of a study of another name
    (the two studies' runs would mix, and each would rewrite the other's index)."""
    folder = Path(out) if out else DEFAULT_PARENT / study.spec.name
    check_makeable_folder(folder, "the output folder")
    if is_study_folder(folder):
        index, unreadable = read_index(folder)
        if unreadable is None and (other := index.get("name")) not in (None, study.spec.name):
            raise InputError(
                f"the output folder {folder} holds the study {other!r}, not {study.spec.name!r}: give this study an output "
                f"folder of its own (--out). If {study.spec.name!r} is {other!r} renamed, rename the folder too, or move "
                f"{folder / INDEX} aside to adopt its runs"
            )
    return folder


def find_study_folder(target: str, registry: Registry) -> Path:
    """The output folder of a study named by its output folder, its file (its default output folder) or its name;
    :class:`InputError` saying what to do when there is none."""
    path = Path(target)
    if is_study_folder(path):
        return path
    if path.suffix.lower() in STUDY_FILE_SUFFIXES and path.is_file():
        path = output_folder(load_study(path, registry, inputs=False))
    elif not path.exists():
        path = DEFAULT_PARENT / target
    if not is_study_folder(path):
        raise InputError(f"{target}: no study output folder there ({path} has no {INDEX}); run the study first, or name its output folder")
    return path


def run_folder(out: Path, run: PlannedRun) -> RunFolder:
    """Where a run of a study writes, inside the study's output folder ``out``."""
    return RunFolder.in_study(Path(out), run.variant, run.seed, run.run_id)


def run_info(out: Path, run: PlannedRun) -> RunInfo:
    """``run`` of a study writing to ``out`` as lifecycle hooks see it."""
    return RunInfo(run.run_id, run.variant_key, run.variant, run.seed, run_folder(out, run).path, run.resolved.as_dict())


def study_info(study: Study, out: Path) -> StudyInfo:
    """``study`` writing to ``out`` as lifecycle hooks see it."""
    runs = [run_info(out, run) for run in study.runs]
    return StudyInfo(study.spec.name, study.source, study.baseline, list(study.spec.seeds), runs, study.spec.model_dump(mode="json"))


def moved_run(out: Path, run: PlannedRun) -> RunFolder | None:
    """This very run's folder (the same seed and run id) elsewhere in ``out``, when it is not where the study puts it:
    the run of a variant renamed since, or of a value spelt differently (``0`` for ``0.0``)."""
    expected = run_folder(out, run)
    if expected.path.exists():
        return None
    return next((f for f in RunFolder.in_output(out) if f.path.name == expected.path.name), None)


def unplanned_runs(out: Path, run_ids: set[str]) -> list[tuple[RunFolder, RunResult]]:
    """The finished run folders in ``out`` whose run id is none of ``run_ids``: runs of configurations a study no longer
    plans (a result that cannot be read is not counted)."""
    found = []
    for folder in RunFolder.in_output(out):
        with contextlib.suppress(CorruptFileError):
            result = folder.read_result()
            if result is not None and result.finished and result.run_id not in run_ids:
                found.append((folder, result))
    return found


def git_commit() -> str | None:
    """The commit checked out in the working directory, if it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def write_index(study: Study, out: Path, evaluations: dict[str, str]) -> None:
    """Record the study and its runs in ``OUT/study.json`` (what ``score``, ``report`` and other readers of the
    folder use), with the ``unpaired`` version and git commit of this invocation, and the evaluation identity each
    run's scores must carry (``evaluations``, by run id) for its scores to be compared."""
    spec = study.spec
    index = {
        "name": spec.name,
        "description": spec.description,
        "question": spec.question,
        "source": study.source,
        **planned_entries(study, out, evaluations),
        "unpaired": __version__,
        "git_commit": git_commit(),
    }
    atomic_write_json(Path(out) / INDEX, index)


def planned_entries(study: Study, out: Path, evaluations: dict[str, str]) -> dict[str, Any]:
    """What ``study.json`` says of ``study``'s plan writing to ``out``: its baseline, variants, seeds, ranking score,
    the study as resolved and its runs (see :func:`write_index`)."""
    return {
        "baseline": study.baseline,
        "variants": study.variant_names,
        "seeds": study.spec.seeds,
        "metric": study.metric,
        "study": study.spec.model_dump(mode="json"),  # as resolved: with any command-line overrides
        "runs": [
            {
                "variant": r.variant,
                "seed": r.seed,
                "run_id": r.run_id,
                "variant_key": r.variant_key,
                "folder": str(run_folder(out, r).path.relative_to(out)),
                "overrides": r.overrides,
                "evaluation": evaluations.get(r.run_id),
            }
            for r in study.runs
        ],
    }


def is_study_folder(path: Path) -> bool:
    return (Path(path) / INDEX).is_file()


def read_index(out: Path) -> tuple[dict[str, Any], str | None]:
    """``OUT/study.json`` and None; when it cannot be read, an index rebuilt from the run folders alone and what was
    wrong with it (raises ``UsageError`` when ``out`` has no index at all: it is not a study output folder)."""
    path = Path(out) / INDEX
    if not path.is_file():
        raise UsageError(f"{out} is not a study output folder (it has no {INDEX})")
    try:
        index = json.loads(path.read_text())
        valid = isinstance(index, dict) and isinstance(index.get("runs"), list) and all(_is_entry(run) for run in index["runs"])
        problem = None if valid else "it is not a study index: no list of runs with their variant, seed, run id and folder"
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"it is not valid JSON: {error}"
    if problem is not None:
        return rebuilt_index(Path(out)), (
            f"{path} cannot be read ({problem}). The runs were read from the run folders instead "
            "(each variant named as its folder; the baseline is unknown); `unpaired run` with the "
            "study file rewrites it"
        )
    return index, None


def _is_entry(run: Any) -> bool:
    fields = {"variant": str, "seed": int, "run_id": str, "folder": str}
    return isinstance(run, dict) and all(isinstance(run.get(key), kind) for key, kind in fields.items())


def rebuilt_index(out: Path) -> dict[str, Any]:
    """What ``study.json`` can be known to say from the run folders in ``out``: every run that started, named by its
    folders; scores are compared under the evaluation most of the finished runs were scored with."""
    runs, identities = [], Counter[str]()
    for folder in RunFolder.in_output(out):
        with contextlib.suppress(CorruptFileError):
            if (result := folder.read_result()) is not None and result.finished and result.scoring is not None:
                identities[result.scoring.identity] += 1
        if (named := folder.seed_and_run_id()) is not None:
            runs.append(
                {
                    "variant": folder.path.parent.name,
                    "seed": named[0],
                    "run_id": named[1],
                    "folder": str(folder.path.relative_to(out)),
                    "overrides": {},
                }
            )
    evaluation = identities.most_common(1)[0][0] if identities else None
    return {
        "name": Path(out).resolve().name,
        "description": "",
        "question": "",
        "baseline": None,
        "variants": list(dict.fromkeys(run["variant"] for run in runs)),
        "seeds": sorted({run["seed"] for run in runs}),
        "metric": None,
        "runs": [{**run, "evaluation": evaluation} for run in runs],
    }


def report_path(out: Path, fmt: str = "html") -> Path:
    """Where a study's report of format ``fmt`` (``html`` or ``markdown``) is written by default."""
    return Path(out) / REPORTS[fmt]
