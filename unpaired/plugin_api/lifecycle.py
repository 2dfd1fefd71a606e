"""What the lifecycle hooks are told: a run and a study as plain views, how a run ended (``RunResult``, what
``result.json`` holds), what one invocation did with each run (``RunOutcome``) and with the study (``StudySummary``).

These are the plugin contract's own types: a listener or an executor reads them without importing the framework.
The words (``RunStatus``, ``Ending``, ``Outcome``) and their transitions are described in
:mod:`unpaired.storage.lifecycle`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from unpaired.errors import Interrupted, StopRequested


@dataclass(frozen=True)
class RunInfo:
    """One run (a variant trained with one seed) as lifecycle hooks see it.

    ``run_id`` identifies the run's result (a hash of everything that can change it, seed
    included); ``variant_key`` the variant's configuration whatever the seed. ``variant`` is
    the name the study gave it (None for ``unpaired train``).
    """

    run_id: str
    variant_key: str
    variant: str | None
    seed: int
    folder: Path
    spec: dict[str, Any]
    """The resolved variant as plain data (what ``spec.json`` holds)."""


@dataclass(frozen=True)
class StudyInfo:
    """One study as lifecycle hooks see it: its name, where it was read from, its baseline and seeds, its runs in order,
    and ``spec``, the study as resolved (what ``study.json`` records as ``study``: tracking settings included)."""

    name: str
    source: str
    baseline: str
    seeds: list[int]
    runs: list[RunInfo]
    spec: dict[str, Any]


class Scoring(BaseModel):
    """What produced a run's scores: the evaluation's identity, its feature extractor, and which way each score is better."""

    model_config = ConfigDict(extra="forbid")
    identity: str
    """Hash of the metrics and the feature extractor, with all their parameters (``ResolvedEval.identity``)."""
    extractor: str
    """The feature extractor by name, as reports head its scores; empty when no metric compares features."""
    lower_is_better: dict[str, bool]
    """Each headline score column (``fid_a2b``, ``fid_mean``, ...) -> whether smaller is better."""
    test_images: dict[str, int] = {}
    """The test images of each domain (``A``, ``B``) the scores compare."""
    test_data: dict[str, str] = {}
    """Each domain's test images as :func:`~unpaired.plugin_api.data.fingerprints` hashes them (none: scored before it
    was recorded)."""
    labels: dict[str, str] = {}
    """Each headline score column -> its metric's label (``FID``), which titles it in compare and the report."""
    from_features: dict[str, bool] = {}
    """Each headline score column -> whether its metric compares the extractor's features (or the images themselves)."""
    caveats: list[str] = []
    """What the metrics say limits these scores (FID on a small test split): compare and the report carry it."""


Ending = Literal["finished", "failed", "interrupted"]
"""How one attempt at a run ends (see :mod:`unpaired.storage.lifecycle`)."""
Outcome = Literal["trained", "rescored", "skipped", "failed", "interrupted", "busy", "not-started"]
"""What one invocation did with a run (see :mod:`unpaired.storage.lifecycle`)."""


class RunResult(BaseModel):
    """How a run ended (``result.json``): finished with its numbers, failed with its error, or interrupted."""

    model_config = ConfigDict(extra="forbid")
    status: Ending
    run_id: str
    error: str | None = None
    """One line: the exception's type and message (the traceback goes to ``error.txt``)."""
    epochs: int = 0
    steps: int = 0
    seconds: float = 0.0
    """Training time over every invocation that trained this run."""
    final_losses: dict[str, float] = {}
    """The last epoch's mean loss terms."""
    parameters: dict[str, int] = {}
    """Each network the method trained (``G_AtoB``, ``D_B``, ...) -> its number of parameters."""
    metrics: dict[str, float] = {}
    """The scores of the final generators (and the best epoch's when scored during training), by column."""
    scoring: Scoring | None = None
    """What produced ``metrics``; None when nothing was scored."""
    scoring_problems: list[str] = []
    """Scores that came out NaN or infinite: the scoring failed (the run trained)."""
    rescored: dict[str, dict[str, float]] = {}
    """Metrics of the best epoch's generators scored again by ``unpaired score --epoch``, by epoch."""
    threads: int | None = None
    """The CPU threads it trained with (a CPU run's numbers depend on them); None on a GPU."""
    plugins: dict[str, str] = {}
    """Distribution -> version of every package whose components the run used (its provenance)."""
    device: str = ""
    """What it trained on, e.g. ``cuda (NVIDIA H200)`` or ``cpu (x86_64, 2 threads)``."""
    deterministic: bool = False
    """It trained with deterministic GPU algorithms (``train.deterministic``), so a rerun gives the same weights bit for bit."""
    cuda_graphs: bool = False
    """Its training steps were captured once as a CUDA graph and replayed (``train.cuda_graphs``)."""
    train_data: dict[str, str] = {}
    """Each domain's training images as :func:`~unpaired.plugin_api.data.fingerprints` hashes them; for a domain whose
    images changed between its invocations, a hash of both sets (none: trained before it was recorded)."""
    host: str = ""
    """The machine that trained it (its host name)."""
    ray_node: str | None = None
    """The Ray node id of that machine, when a Ray cluster trained it."""

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @classmethod
    def from_exception(cls, run_id: str, error: BaseException) -> RunResult:
        """The result of a run stopped by ``error``: interrupted by a signal, or failed."""
        if isinstance(error, (Interrupted, StopRequested)):
            return cls(status="interrupted", run_id=run_id, error=str(error))
        return cls(status="failed", run_id=run_id, error=f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class RunOutcome:
    """What one invocation did with one run: the :data:`Outcome`, the run's result when it has one, and a line
    saying why it failed or who holds it. Picklable: workers send it back to the study."""

    outcome: Outcome
    result: RunResult | None = None
    detail: str = ""

    @classmethod
    def of_result(cls, result: RunResult, reused: bool = False, rescored: bool = False) -> RunOutcome:
        """The outcome of an attempt that ended with ``result``; ``reused``: the run was done before it started;
        ``rescored``: it was done, and this attempt only scored it again."""
        if result.finished and result.scoring_problems:  # trained, but its numbers cannot be used
            return cls("failed", result, f"the scoring failed: {'; '.join(result.scoring_problems)}")
        if result.finished:
            return cls("skipped" if reused else "rescored" if rescored else "trained", result)
        if result.status == "interrupted":
            return cls("interrupted", result, result.error or "")
        return cls("failed", result, result.error or "")

    @classmethod
    def busy(cls, holder: str) -> RunOutcome:
        """Another live process trains the run: ``holder`` says who it is."""
        return cls("busy", None, holder)


@dataclass
class StudySummary:
    """What one ``unpaired run`` did with each run, by outcome (see :mod:`unpaired.storage.lifecycle`)."""

    done: list[RunInfo] = field(default_factory=list)
    """Runs trained (or scored again) to the end by this invocation: the outcomes ``trained`` and ``rescored``."""
    rescored: list[RunInfo] = field(default_factory=list)
    """Those of ``done`` that were only scored again."""
    skipped: list[RunInfo] = field(default_factory=list)
    failed: list[tuple[RunInfo, str]] = field(default_factory=list)
    interrupted: list[RunInfo] = field(default_factory=list)
    busy: list[tuple[RunInfo, str]] = field(default_factory=list)
    """Runs another live process was training (its lease was held), with who it is."""
    stopped_by: int | None = None
    """The signal that stopped the study (queued runs were not started), or None."""
    aborted: str | None = None
    """Why the study itself stopped with an error (a bug, an unreachable service), or None."""
    notes: list[str] = field(default_factory=list)
    """What listeners add when the study ends (e.g. runs whose tracking is incomplete)."""

    @property
    def exit_code(self) -> int:
        """What ``unpaired run`` exits with: 128 + the signal when stopped, 1 when a run failed, else 0."""
        if self.stopped_by is not None:
            return 128 + self.stopped_by
        return 1 if self.failed or self.aborted else 0

    def record(self, run: RunInfo, outcome: RunOutcome) -> None:
        """Count what became of ``run``; a run never started (``not-started``) stays pending and is not counted."""
        if outcome.outcome in ("trained", "rescored"):
            self.done.append(run)
            if outcome.outcome == "rescored":
                self.rescored.append(run)
        elif outcome.outcome == "skipped":  # another process finished it meanwhile
            self.skipped.append(run)
        elif outcome.outcome == "interrupted":
            self.interrupted.append(run)
        elif outcome.outcome == "busy":
            self.busy.append((run, outcome.detail))
        elif outcome.outcome == "failed":
            self.failed.append((run, outcome.detail))

    def __str__(self) -> str:
        lines = [
            f"done {len(self.done)}"
            + (f" ({len(self.rescored)} of them scored again, not trained)" if self.rescored else "")
            + f", failed {len(self.failed)}, skipped {len(self.skipped)} (finished earlier)"
            + (f", interrupted {len(self.interrupted)}" if self.interrupted else "")
            + (f", busy {len(self.busy)} (being trained by another process)" if self.busy else "")
        ]
        if self.stopped_by is not None:
            lines.append(f"stopped by signal {self.stopped_by}: run the same command again to resume")
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"  FAILED {run.variant} seed {run.seed}: {error}" for run, error in self.failed]
        lines += [f"  BUSY {run.variant} seed {run.seed}: trained by {holder}; rerun later to pick up what it leaves" for run, holder in self.busy]
        if self.busy:  # the exit code stays 0 (another invocation is no failure), so the last line says it
            lines.append(f"incomplete: {len(self.busy)} run(s) are being trained by another process; run the same command again once it ends")
        return "\n".join(lines)
