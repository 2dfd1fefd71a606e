"""Scoring a finished run's saved generators again, from its run folder alone."""

from __future__ import annotations

import torch

from unpaired.config.resolved import ResolvedVariant, resolve_variant
from unpaired.evaluation.features import EvaluationError
from unpaired.evaluation.scoring import Scorer, Scores
from unpaired.plugin_api.metrics import method_directions
from unpaired.plugin_api.registry import Registry
from unpaired.results.records import ExportedGenerator
from unpaired.results.run_folder import RunFolder


def _best_or_final(folder: RunFolder, epoch: int | None) -> bool:
    """Whether the generators to score for ``epoch`` are the best epoch's (True) or the final ones (False);
    raises when the folder keeps none of that epoch."""
    result = folder.read_result()
    final_epoch = result.epochs if result and result.finished else None
    best_epoch = result.metrics.get("best_epoch") if result else None
    if epoch is None or epoch == final_epoch:
        best = False
    elif epoch == best_epoch:
        best = True
    else:
        kept = ", ".join(str(int(e)) for e in dict.fromkeys([final_epoch, best_epoch]) if e is not None) or "none (not finished)"
        raise EvaluationError(f"{folder} keeps generators of epoch(s) {kept}, not of epoch {epoch}")
    if not any(folder.generator_path(direction, best).is_file() for direction in ("AtoB", "BtoA")):
        raise EvaluationError(f"{folder} has no saved generators{' of the best epoch' if best else ''}: has the run finished?")
    return best


def rescore_run(folder: RunFolder, registry: Registry, device: torch.device, epoch: int | None = None,
                variant: ResolvedVariant | None = None) -> Scores:
    """Score a run folder's saved generators again and record the scores in its result.json: after a crash while
    scoring, or under another evaluation (``variant``: the study's variant now, whose ``eval`` may differ from the
    one in the folder's spec.json; default: that spec's)."""
    best = _best_or_final(folder, epoch)
    variant = variant or resolve_variant(folder.read_spec(), registry, source=str(folder.spec_file))
    directions = method_directions(variant.method.component.factory)
    generators = {d: ExportedGenerator.read(folder.generator_path(d, best), d).build(registry).to(device)  # type: ignore[arg-type]
                  for d in directions}
    scores = Scorer(variant.eval, device).score(generators, variant.data.build(), variant.data.as_dict())
    result = folder.read_result()
    assert result is not None  # _best_or_final found the generators of a run that ended
    if best:
        result.rescored[str(epoch)] = scores.values
    else:
        result.metrics = {**{k: v for k, v in result.metrics.items() if k.endswith("_best") or k == "best_epoch"}, **scores.values}
        result.scoring, result.scoring_problems = scores.scoring, scores.problems
    folder.write_result(result)
    return scores
