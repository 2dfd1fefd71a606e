"""Scoring a finished run's saved generators again, from its run folder alone."""

from __future__ import annotations

import torch

from unpaired.config.resolved import resolve_variant
from unpaired.evaluation.fid import EvaluationError, FeatureExtractor, score_generators
from unpaired.plugin_api.registry import Registry
from unpaired.results.records import ExportedGenerator
from unpaired.results.run_folder import RunFolder
from unpaired.training.parts import rebuild_generator


def _best_or_final(folder: RunFolder, epoch: int | None) -> bool:
    """Whether the generators to score for ``epoch`` are the best epoch's (True) or the final ones (False);
    raises when the folder keeps none of that epoch."""
    result = folder.read_result()
    final_epoch = result.epochs if result and result.finished else None
    best_epoch = result.metrics.get("fid_best_epoch") if result else None
    if epoch is None or epoch == final_epoch:
        best = False
    elif epoch == best_epoch:
        best = True
    else:
        kept = ", ".join(str(int(e)) for e in dict.fromkeys([final_epoch, best_epoch]) if e is not None) or "none (not finished)"
        raise EvaluationError(f"{folder} keeps generators of epoch(s) {kept}, not of epoch {epoch}")
    if not all(folder.generator_path(direction, best).is_file() for direction in ("AtoB", "BtoA")):
        raise EvaluationError(f"{folder} has no saved generators{' of the best epoch' if best else ''}: has the run finished?")
    return best


def rescore_run(folder: RunFolder, registry: Registry, device: torch.device, epoch: int | None = None) -> dict[str, float]:
    """Score a run folder's saved generators again (e.g. after a crash while scoring, or with another
    extractor set in its spec.json's eval section) and record the metrics in its result.json."""
    best = _best_or_final(folder, epoch)
    variant = resolve_variant(folder.read_spec(), registry, source=str(folder.spec_file))
    extractor = FeatureExtractor(variant.eval.feature_extractor, device, variant.eval.batch_size)
    G_AB, G_BA = (rebuild_generator(ExportedGenerator.read(folder.generator_path(d, best), d), registry).to(device) for d in ("AtoB", "BtoA"))
    metrics = score_generators(G_AB, G_BA, variant.data.build(), variant.data.as_dict(), extractor)
    result = folder.read_result()
    assert result is not None  # _best_or_final found the generators of a run that ended
    if best:
        result.rescored[str(epoch)] = metrics
    else:
        result.metrics = {**result.metrics, **metrics}
    folder.write_result(result)
    return metrics
