"""Training one run in its folder, whatever happens: the entry point every executor calls."""

from __future__ import annotations

import contextlib
import socket
import warnings

from unpaired.config.resolved import ResolvedVariant
from unpaired.errors import Notice, StopRequested, UnpairedError
from unpaired.evaluation.features import EvaluationError
from unpaired.evaluation.rescore import rescore_run
from unpaired.evaluation.scoring import Scorer
from unpaired.plugin_api.lifecycle import RunInfo, RunResult
from unpaired.plugin_api.registry import Registry
from unpaired.storage.files import CorruptFileError, StorageError
from unpaired.storage.lease import LeaseHeld, LeaseUnusable
from unpaired.storage.lifecycle import RunOutcome, outcome_of_exception
from unpaired.storage.records import describe_failure
from unpaired.storage.run_folder import RunFolder
from unpaired.training.loop import ScoringStopped, Trainer
from unpaired.training.runtime import TrainingError
from unpaired.devices import gpu_algorithms, pick_device, thread_count_kept


def train_run(
    variant: ResolvedVariant,
    folder: RunFolder,
    registry: Registry,
    variant_name: str | None = None,
    show_progress: bool = True,
    lease_wait: float = 0.0,
    ray_node: str | None = None,
) -> RunOutcome:
    """Train ``variant`` in ``folder``, resuming from its latest checkpoint there, and return what became of it.

    This is the one place where an exception becomes a run's status (the words of :mod:`unpaired.storage.lifecycle`): a signal makes the run
    ``interrupted`` (a checkpoint was written; nothing else is recorded), any other exception
    ``failed`` (``result.json`` says why, ``error.txt`` holds the details). A finished run is not
    trained again: its stored result is returned, or, when its scores are missing or were made under another
    evaluation than ``variant.eval``, its final generators are scored again (a failed rescoring keeps its
    result). The lifecycle hooks are told of the start (before anything is loaded) and of the end. All of it happens while holding the run folder's
    lease: when another live process holds it (still, after ``lease_wait`` seconds), nothing is done and the
    outcome is ``busy``. A run trained here records this host (and ``ray_node``, the Ray node id, if any).
    """
    lease = folder.lease()
    try:
        lease.acquire(wait=lease_wait)
    except LeaseHeld as held:  # another live process trains this run
        return RunOutcome.busy(held.who)
    except LeaseUnusable as error:  # e.g. a directory of the lease file's name: this run fails, the others go on
        return outcome_of_exception(variant.run_id, error)
    try:
        with thread_count_kept(), gpu_algorithms(variant.train.deterministic):
            previous = _previous_result(folder)
            if previous is not None and previous.finished and previous.run_id != variant.run_id:  # never written over
                taken = TrainingError(
                    f"{folder} holds the finished run {previous.run_id}, not this one ({variant.run_id}): train into another "
                    "folder, or delete that one first"
                )
                return outcome_of_exception(variant.run_id, taken)
            decided = _done_or_rescorer(previous, variant)
            if isinstance(decided, RunOutcome):
                return decided
            run = RunInfo(variant.run_id, variant.variant_key, variant_name, variant.train.seed, folder.path, variant.as_dict())
            result = _attempt(variant, folder, registry, run, decided, show_progress, ray_node)
            registry.hook.unpaired_on_variant_end(run=run, result=result)  # its name in 0.1, deprecated
            registry.hook.unpaired_on_run_end(run=run, result=result)
            return RunOutcome.of_result(result, rescored=decided is not None)
    finally:
        lease.release()


def _done_or_rescorer(previous: RunResult | None, variant: ResolvedVariant) -> RunOutcome | Scorer | None:
    """For a run already finished: its outcome when nothing is left to do (its scores are this evaluation's, or it cannot
    be scored here), else the scorer to score it again with. None for a run to train."""
    if previous is None or not previous.finished or previous.run_id != variant.run_id:
        return None
    try:
        scorer = Scorer(variant.eval, pick_device(variant.train.device)) if variant.eval.metrics else None
    except UnpairedError as error:  # e.g. the extractor cannot load here: the finished result stays as it is
        return outcome_of_exception(variant.run_id, error)
    if scorer is None or (previous.scoring is not None and previous.scoring.identity == scorer.identity):
        return RunOutcome.of_result(previous, reused=True)
    return scorer


def _attempt(
    variant: ResolvedVariant, folder: RunFolder, registry: Registry, run: RunInfo, scorer: Scorer | None, show_progress: bool, ray_node: str | None
) -> RunResult:
    """Tell the listeners the run starts, train it to its end (or, with ``scorer``, only score it again) and record the
    result; an exception becomes the result (see :func:`train_run`)."""
    here = {"host": socket.gethostname(), "ray_node": ray_node}
    try:
        registry.hook.unpaired_on_run_start(run=run)
        registry.hook.unpaired_on_variant_start(run=run)  # its name in 0.1, deprecated
        if scorer is not None:  # trained, but scored under another evaluation (or not at all): score, train nothing
            result = _rescored(folder, registry, scorer, variant)
        else:
            result = Trainer(variant, folder, run, registry.hook, show_progress).run_to_end().model_copy(update=here)
        failure = None
    except ScoringStopped as stopped:  # trained to the end, its scoring cut short: recorded unscored (rescore)
        with contextlib.suppress(StorageError):  # unrecorded, the run resumes from its last checkpoint instead
            folder.write_result(stopped.result.model_copy(update=here))
        result, failure = RunResult.from_exception(variant.run_id, stopped), None
    except (Exception, StopRequested) as error:  # a signal outside the training loop: interrupted, resumable
        result, failure = RunResult.from_exception(variant.run_id, error), describe_failure(error)
    if result.status != "interrupted" and (scorer is None or result.finished):  # a failed rescoring keeps the result
        try:
            folder.write_result(result, failure)
        except StorageError as error:  # e.g. the disk filled up: the run is not recorded, a rerun redoes its end
            result = RunResult.from_exception(variant.run_id, error)
    return result


def _rescored(folder: RunFolder, registry: Registry, scorer: Scorer, variant: ResolvedVariant) -> RunResult:
    """The finished run's result after scoring its final generators under ``variant``'s evaluation, which its spec
    now records."""
    rescore_run(folder, registry, scorer, variant)
    folder.write_spec(variant.as_dict())
    result = folder.read_result()
    if result is None:
        raise EvaluationError(f"{folder}: its result went missing while the run was scored again; run the study again")
    return result


def _previous_result(folder: RunFolder) -> RunResult | None:
    """How the run ended before, if it did; a corrupt result.json is set aside (with a warning): training
    then resumes from the last checkpoint and writes a new one."""
    try:
        return folder.read_result()
    except CorruptFileError as error:
        warnings.warn(f"{error}; it was renamed {folder.set_aside(error.path).name} and the run resumes from its checkpoint", Notice, stacklevel=2)
        return None
