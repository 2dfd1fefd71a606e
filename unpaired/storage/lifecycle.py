"""A run's life in one vocabulary: where it stands (read from its folder), how one attempt at it ends, and what
one invocation of a study did with it. Every layer (training, planning, the run folder, study results, the
summary, tracking) uses these words and these transitions, and only these.

Where a run stands, :data:`RunStatus`, read from its folder by ``RunFolder.status``::

    pending --train--> running --+--> done          (result.json: finished, with this evaluation's scores)
                          ^      +--> failed        (result.json: failed; a rerun trains it again)
                          |      +--> partial       (a checkpoint, no result: interrupted, or killed)
                          +--------- partial, failed
    done --> stale          the installed plugins have other versions than those that trained it
    done --> rescore        its scores are missing or of another evaluation: scored again, not trained
    done --> score-failed   its scores are NaN or infinite: it trained, but its numbers cannot be used

How an attempt ends, :data:`Ending` (``RunResult.status``, in ``result.json``, whose module defines it): ``finished``, ``failed`` or
``interrupted`` (never written: the checkpoint is the record).

What an invocation did with a run, :data:`Outcome` (a :class:`RunOutcome`, what every executor collects):
``trained`` (to the end), ``rescored`` (scored again, not trained), ``skipped`` (done before it was reached), ``failed``,
``interrupted``, ``busy`` (another live process holds it) or ``not-started`` (queued when a signal came);
a :class:`StudySummary` counts them for one ``unpaired run``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from unpaired.config.study import PlannedRun
from unpaired.storage.lease import LeaseHeld
from unpaired.storage.records import Ending, RunResult

RunStatus = Literal["done", "stale", "rescore", "score-failed", "running", "partial", "failed", "pending"]
Outcome = Literal["trained", "rescored", "skipped", "failed", "interrupted", "busy", "not-started"]
TO_TRAIN: frozenset[RunStatus] = frozenset({"pending", "partial", "failed", "running", "rescore"})
"""The statuses an invocation hands to its executor (a running one is trained by whoever takes its lease next)."""


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
    def of_exception(cls, run_id: str, error: BaseException) -> RunOutcome:
        """The outcome of an attempt that raised ``error`` before it could record anything (its worker died, say)."""
        if isinstance(error, LeaseHeld):
            return cls.busy(error)
        return cls.of_result(RunResult.from_exception(run_id, error))

    @classmethod
    def busy(cls, held: LeaseHeld) -> RunOutcome:
        """Another live process trains the run: who it is."""
        return cls("busy", None, held.who)


@dataclass
class StudySummary:
    """What one ``unpaired run`` did with each run, by outcome (see :mod:`unpaired.storage.lifecycle`)."""

    done: list[PlannedRun] = field(default_factory=list)
    """Runs trained (or scored again) to the end by this invocation: the outcomes ``trained`` and ``rescored``."""
    rescored: list[PlannedRun] = field(default_factory=list)
    """Those of ``done`` that were only scored again."""
    skipped: list[PlannedRun] = field(default_factory=list)
    failed: list[tuple[PlannedRun, str]] = field(default_factory=list)
    interrupted: list[PlannedRun] = field(default_factory=list)
    busy: list[tuple[PlannedRun, str]] = field(default_factory=list)
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

    def record(self, run: PlannedRun, outcome: RunOutcome) -> None:
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


__all__ = ["TO_TRAIN", "Ending", "Outcome", "RunOutcome", "RunStatus", "StudySummary"]
