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
a :class:`StudySummary` counts them for one ``unpaired run``. ``Ending``, ``Outcome``, ``RunResult``, ``RunOutcome`` and
``StudySummary`` are the plugin contract's types (:mod:`unpaired.plugin_api.lifecycle`); they are named here too.
"""

from __future__ import annotations

from typing import Literal

from unpaired.plugin_api.lifecycle import Ending, Outcome, RunOutcome, RunResult, StudySummary
from unpaired.storage.lease import LeaseHeld

RunStatus = Literal["done", "stale", "rescore", "score-failed", "running", "partial", "failed", "pending"]
TO_TRAIN: frozenset[RunStatus] = frozenset({"pending", "partial", "failed", "running", "rescore"})
"""The statuses an invocation hands to its executor (a running one is trained by whoever takes its lease next)."""


def outcome_of_exception(run_id: str, error: BaseException) -> RunOutcome:
    """The outcome of an attempt that raised ``error`` before it could record anything (its worker died, say): ``busy``
    when another live process holds the run's lease."""
    if isinstance(error, LeaseHeld):
        return RunOutcome.busy(error.who)
    return RunOutcome.of_result(RunResult.from_exception(run_id, error))


__all__ = ["TO_TRAIN", "Ending", "Outcome", "RunOutcome", "RunResult", "RunStatus", "StudySummary", "outcome_of_exception"]
