"""Scoring a finished run's saved generators again, from its run folder alone."""

from __future__ import annotations

import warnings

import torch

from unpaired.config.resolved import ResolvedVariant, resolve_variant
from unpaired.evaluation.features import EvaluationError
from unpaired.evaluation.scoring import Scorer, Scores
from unpaired.errors import Notice
from unpaired.plugin_api.methods import DIRECTIONS
from unpaired.plugin_api.metrics import best_columns, method_directions
from unpaired.plugin_api.registry import Registry
from unpaired.storage.records import ExportedGenerator
from unpaired.plugin_api.lifecycle import RunResult
from unpaired.storage.run_folder import RunFolder


def _best_or_final(folder: RunFolder, result: RunResult, best_epoch: float | None, epoch: int | None) -> bool:
    """Whether the generators to score for ``epoch`` are the best epoch's (True) or the final ones (False);
    raises when the folder keeps none of that epoch."""
    final_epoch = result.epochs if result.finished else None
    if epoch is None or epoch == final_epoch:
        best = False
    elif epoch == best_epoch:
        best = True
    else:
        kept = ", ".join(str(int(e)) for e in dict.fromkeys([final_epoch, best_epoch]) if e is not None) or "none (not finished)"
        raise EvaluationError(f"{folder} keeps generators of epoch(s) {kept}, not of epoch {epoch}")
    if not any(folder.generator_path(direction, best).is_file() for direction in DIRECTIONS):
        raise EvaluationError(f"{folder} has no saved generators{' of the best epoch' if best else ''}: has the run finished?")
    return best


def rescore_run(folder: RunFolder, registry: Registry, scorer: Scorer, variant: ResolvedVariant, epoch: int | None = None) -> Scores:
    """Score a run folder's saved generators again with ``scorer`` (made from ``variant.eval``, which may differ from
    the evaluation the run was scored with) and record the scores in its result.json. ``epoch``: the best epoch's
    generators instead of the final ones (their scores go to ``rescored``). What training chose as its best epoch stays."""
    kept_best = best_columns(variant.eval.select_best_by) if variant.eval.select_best_by else ()
    result = folder.read_result()
    if result is None:
        raise EvaluationError(f"{folder} has not finished (it records no result), so there is nothing to score")
    best_epoch = result.metrics.get(kept_best[1]) if kept_best else None
    directions = method_directions(variant.method.component.factory)
    mended = result.finished and epoch in (None, result.epochs) and folder.mend_generators(directions, result.epochs)
    if mended and mended[0]:  # not mended: reading the generator below says what is wrong with it
        warnings.warn(mended[1], Notice, stacklevel=2)
    best = _best_or_final(folder, result, best_epoch, epoch)
    generators = {d: ExportedGenerator.read(folder.generator_path(d, best), d).build(registry).to(scorer.device) for d in directions}
    scores = scorer.score(generators, variant.data.build(), variant.data.as_dict())
    if best:
        result.rescored[str(epoch)] = scores.values
    else:
        result.metrics = {**{k: v for k, v in result.metrics.items() if k in kept_best}, **scores.values}
        result.scoring, result.scoring_problems = scores.scoring, scores.problems
        result.plugins = dict(sorted({**result.plugins, **variant.eval.plugins()}.items()))  # provenance: what scored it now
    folder.write_result(result)
    scores.tracked = folder.mark_tracking_behind()  # MLflow holds the old scores until the study's next tracked run
    return scores


def rescore_folder(folder: RunFolder, registry: Registry, device: torch.device, epoch: int | None = None) -> Scores:
    """Score a run folder's saved generators again with the evaluation its spec.json holds (``unpaired score``: e.g.
    after a crash while scoring, or after editing that eval section)."""
    variant = resolve_variant(folder.read_spec(), registry, source=str(folder.spec_file))
    return rescore_run(folder, registry, Scorer(variant.eval, device), variant, epoch)
