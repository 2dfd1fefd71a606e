"""The run folder: where each file of a run lives, written atomically and checked when read back.

    spec.json                      the resolved variant
    history.json, history.csv      one row per epoch: mean loss terms, lr, epoch_seconds, it/s (FID when scored)
    samples/epoch-NNNN.png         real | translated | reconstructed on fixed test images
    checkpoints/epoch-NNNN-step-NNNNNNNNN.pt   the latest checkpoint
    generators/AtoB.pt, BtoA.pt    the final generators (best-AtoB.pt ... of the best epoch when scored during training)
    result.json                    how the run ended
    error.txt                      what made it fail
    mlflow_run.json                the MLflow run that tracks it
    lease.json                     who is training it now (see :mod:`unpaired.storage.lease`)

No other module spells these names. What the files hold is typed in :mod:`unpaired.storage.records`.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unpaired.errors import InputError, UnpairedError
from unpaired.storage.files import CorruptFileError, atomic_save, atomic_write_json, atomic_write_text, load_tensors, read_json
from unpaired.storage.lease import Lease
from unpaired.storage.lifecycle import RunStatus
from unpaired.storage.records import Checkpoint, Direction, ExportedGenerator, validate_result
from unpaired.plugin_api.lifecycle import RunResult

_CHECKPOINT = re.compile(r"^epoch-(\d+)-step-(\d+)\.pt$")


def variant_folder_name(variant: str) -> str:
    """The folder name of a variant's runs: letters, digits and ``_.=+-`` only, never starting with ``.``."""
    return re.sub(r"^\.|[^A-Za-z0-9_.=+-]", "_", variant) or "_"


@dataclass(frozen=True)
class RunFolder:
    """The folder of one run (a variant trained with one seed) and every file in it."""

    path: Path

    @classmethod
    def in_study(cls, out: Path, variant: str, seed: int, run_id: str) -> RunFolder:
        """A study's run folder: ``OUT/<variant>/seed<k>-<run id>``, always inside ``OUT`` (characters a file name cannot
        hold become ``_``, and so does a leading ``.``: no name is ``.`` or ``..`` or a hidden folder)."""
        return cls(Path(out) / variant_folder_name(variant) / f"seed{seed}-{run_id}")

    def seed_and_run_id(self) -> tuple[int, str] | None:
        """The seed and run id this folder's name says (``seed<k>-<run id>``), or None for a name of another form."""
        seed, _, run_id = self.path.name.removeprefix("seed").partition("-")
        return (int(seed), run_id) if self.path.name.startswith("seed") and seed.isdigit() and run_id else None

    @classmethod
    def in_output(cls, out: Path) -> list[RunFolder]:
        """Every run folder of a study output folder that started training, whatever variant or run id it is of
        (folders moved aside, ``.old-N``, are not)."""
        return [cls(path) for path in sorted(Path(out).glob("*/seed*-*")) if ".old-" not in path.name and cls.holds_run(path)]

    @classmethod
    def holds_run(cls, path: Path) -> bool:
        """True when ``path`` is a run folder that started training (it has its spec)."""
        return cls(Path(path)).spec_file.is_file()

    def __str__(self) -> str:
        return str(self.path)

    # The spec and the per-epoch history.

    @property
    def spec_file(self) -> Path:
        return self.path / "spec.json"

    def write_spec(self, spec: dict[str, Any]) -> None:
        atomic_write_json(self.spec_file, spec)

    def read_spec(self) -> dict[str, Any]:
        return read_json(self.spec_file)

    def write_history(self, history: list[dict[str, float]]) -> None:
        """``history.json`` and the same rows as ``history.csv`` (columns in order of first appearance)."""
        atomic_write_json(self.history_file, history)
        if history:
            table = io.StringIO()
            writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(key for row in history for key in row)), restval="")
            writer.writeheader()
            writer.writerows(history)
            atomic_write_text(self.path / "history.csv", table.getvalue())

    @property
    def history_file(self) -> Path:
        """The file of :meth:`read_history`, rewritten whole at each epoch's end: its stamp tells whether it grew."""
        return self.path / "history.json"

    def read_history(self) -> list[dict[str, float]]:
        """The rows :meth:`write_history` wrote, one per epoch with its ``epoch`` (none before the first epoch ends)."""
        path = self.history_file
        rows = read_json(path) if path.is_file() else []
        if not isinstance(rows, list) or not all(isinstance(row, dict) and isinstance(row.get("epoch"), int) for row in rows):
            raise CorruptFileError(path, "is not a training history (a list of one row per epoch); delete it or restore it from a backup")
        return rows

    def history_so_far(self) -> list[dict[str, float]]:
        """:meth:`read_history` as seen from outside the run (``plan``, a driver following it): none where the file cannot
        be read now (being replaced, or corrupt: the run itself says so when it resumes)."""
        try:
            return self.read_history()
        except (OSError, UnpairedError):
            return []

    def sample_path(self, epoch: int) -> Path:
        """Where the sample grid after ``epoch`` epochs goes."""
        return self.path / "samples" / f"epoch-{epoch:04d}.png"

    # Checkpoints: only the latest is kept.

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint with the most steps (temporary files of interrupted writes are ignored)."""
        if not self.checkpoints.is_dir():
            return None
        found = [(int(m[2]), p) for p in self.checkpoints.iterdir() if (m := _CHECKPOINT.match(p.name))]
        return max(found)[1] if found else None

    def save_checkpoint(self, checkpoint: Checkpoint) -> Path:
        """Write ``checkpoint`` atomically, then delete the older ones; return its path."""
        state = checkpoint.state
        path = self.checkpoints / f"epoch-{state.epoch:04d}-step-{state.global_step:09d}.pt"
        atomic_save(checkpoint.to_file(), path)
        for other in self.checkpoints.iterdir():
            if _CHECKPOINT.match(other.name) and other != path:
                other.unlink(missing_ok=True)
        return path

    def retire(self) -> Path:
        """Move the whole folder aside (to ``<name>.old-N``) so the run starts again from nothing; return where it went."""
        number = 1
        while (aside := self.path.with_name(f"{self.path.name}.old-{number}")).exists():
            number += 1
        self.path.rename(aside)
        return aside

    def set_aside(self, path: Path) -> Path:
        """Rename a corrupt file to ``<name>.corrupt`` (kept for a look, ignored from then on); return its new path."""
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        return aside

    def load_checkpoint(self, path: Path | None = None) -> Checkpoint | None:
        """The checkpoint at ``path`` (default: the latest), or None when there is none."""
        path = path or self.latest_checkpoint()
        return None if path is None else Checkpoint.read(path)

    # Exported generators.

    def generator_path(self, direction: Direction, best: bool = False) -> Path:
        return self.path / "generators" / f"{'best-' if best else ''}{direction}.pt"

    def export_generator(self, generator: ExportedGenerator, best: bool = False) -> None:
        atomic_save(generator.to_file(), self.generator_path(generator.direction, best))

    @property
    def generators(self) -> Path:
        return self.path / "generators"

    def damaged_generators(self, directions: Sequence[Direction]) -> list[Direction]:
        """The ``directions`` whose final generator file is missing or not a whole archive (cut short by a copy, say).
        It reads only the end of each file: cheap enough for every finished run of every ``unpaired run``."""
        return [direction for direction in directions if not zipfile.is_zipfile(self.generator_path(direction))]

    def mend_generators(self, directions: Sequence[Direction], epochs: int) -> tuple[bool, str] | None:
        """Export the final generators of ``directions`` that are missing or cut short again from the run's last
        checkpoint, which holds the same weights when it is of epoch ``epochs`` (the run's last). None when none is
        damaged; else whether they were mended, and a line saying so, or why not and what to do."""
        damaged = self.damaged_generators(directions)
        if not damaged:
            return None
        names = ", ".join(str(self.generator_path(direction)) for direction in damaged)
        path = self.latest_checkpoint()
        last = _CHECKPOINT.match(path.name) if path else None
        if path is None or last is None or int(last[1]) != epochs:
            why = f"no checkpoint of its last epoch ({epochs}) is left to export them from"
        else:
            try:
                for direction in damaged:
                    self.export_generator(ExportedGenerator.read(path, direction))
                return True, f"{names}: missing or damaged; exported again from {path.name}, the run's last checkpoint"
            except InputError as error:  # the checkpoint is damaged too (a failed write, say, raises as any write does)
                why = str(error)
        return False, f"{names}: missing or damaged, and {why}: move {self.path} aside and run again to train it anew"

    def generator_stamp(self, direction: Direction) -> list[int] | None:
        """Size and modification time (ns) of the final generator's file: what a saved showcase was made from."""
        path = self.generator_path(direction)
        return [path.stat().st_size, path.stat().st_mtime_ns] if path.is_file() else None

    def write_showcase(self, showcase: dict[str, Any]) -> None:
        """Per direction: the test image ``indices``, their translations ``images`` (uint8) and the ``generator``'s stamp."""
        atomic_save(showcase, self.path / "showcase.pt")

    def read_showcase(self) -> dict[str, Any] | None:
        """What :meth:`write_showcase` saved; None when there is none, or it cannot be read (it is only a shortcut)."""
        path = self.path / "showcase.pt"
        try:
            return load_tensors(path) if path.is_file() else None
        except Exception:  # a torn or foreign file: the report translates again
            return None

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    # How the run ended.

    def write_result(self, result: RunResult, failure: str | None = None) -> None:
        """Record ``result``; ``failure`` (the traceback or message of a failed run) goes to ``error.txt``,
        and a finished run keeps no ``error.txt`` of an earlier failed attempt."""
        if failure is not None:
            atomic_write_text(self.error_file, failure)
        elif result.finished:
            self.error_file.unlink(missing_ok=True)
        atomic_write_json(self.path / "result.json", result.model_dump(mode="json"))

    def read_result(self) -> RunResult | None:
        """How the run ended, or None when it has not ended here yet."""
        path = self.path / "result.json"
        return validate_result(path, read_json(path)) if path.is_file() else None

    @property
    def error_file(self) -> Path:
        return self.path / "error.txt"

    def status(self, run_id: str, plugins: dict[str, str] | None = None, evaluation: str | None = None) -> RunStatus:
        """``done`` (finished as ``run_id``), ``stale`` (done, but by other versions of the ``plugins`` that provide
        its training components: distribution -> version), ``rescore`` (done, but its scores are missing or carry another
        identity than ``evaluation``; None: scores are not checked), ``score-failed`` (done, a score is NaN or
        infinite), ``running`` (a live process holds its lease), ``failed``, ``partial`` (has a checkpoint) or ``pending``:
        the vocabulary of :mod:`unpaired.storage.lifecycle`."""
        try:
            result = self.read_result()
        except CorruptFileError:  # training it again will rewrite it
            result = None
        if result is not None and result.finished and result.run_id == run_id:
            if plugins is not None and result.plugins and {dist: result.plugins.get(dist) for dist in plugins} != plugins:
                return "stale"
            if evaluation is not None and (result.scoring is None or result.scoring.identity != evaluation):
                return "rescore"
            return "score-failed" if result.scoring_problems else "done"
        if self.is_leased():
            return "running"
        if result is not None and result.status == "failed":
            return "failed"
        return "partial" if self.latest_checkpoint() else "pending"

    def finished_files(self) -> list[Path]:
        """The files of a finished run worth keeping elsewhere (e.g. as tracking artifacts), besides its folders."""
        return [p for p in (self.path / n for n in ("spec.json", "history.csv", "history.json", "result.json")) if p.is_file()]

    def lease(self) -> Lease:
        """The run's lease: only the process holding it trains the run (``with folder.lease(): ...``)."""
        return Lease(self.path / "lease.json")

    def is_leased(self) -> bool:
        """True while a live process holds the run's lease."""
        lease = self.lease()
        return lease.path.is_file() and not lease.is_stale(lease.read_holder())

    # The MLflow run that tracks this run.

    def read_tracking_link(self) -> dict[str, Any] | None:
        """``{"tracking_uri", "run_id", "complete"}`` of the MLflow run recorded for this run, or None."""
        path = self.path / "mlflow_run.json"
        if not path.is_file():
            return None
        link = read_json(path)
        if not isinstance(link, dict) or not isinstance(link.get("run_id"), str):
            raise CorruptFileError(path, "is not a link to an MLflow run")
        return link

    def write_tracking_link(self, tracking_uri: str | None, mlflow_run_id: str, complete: bool) -> None:
        """Record the MLflow run of this run; ``complete``: everything the run folder holds has been logged to it."""
        atomic_write_json(self.path / "mlflow_run.json", {"tracking_uri": tracking_uri, "run_id": mlflow_run_id, "complete": complete})

    def mark_tracking_behind(self) -> bool:
        """Record that the MLflow run of this run no longer holds everything the folder does (its result changed where no
        tracker followed, as ``unpaired score`` changes it), so that the study's next tracked ``unpaired run`` logs it
        again; whether there is such an MLflow run."""
        try:
            link = self.read_tracking_link()
        except CorruptFileError:  # the next tracked run replaces it
            return False
        if link is not None and link.get("complete"):
            self.write_tracking_link(link.get("tracking_uri"), link["run_id"], complete=False)
        return link is not None
