"""Scoring translators with a study's metrics: every metric in every direction, and what produced the scores.

A metric that compares features gets the feature extractor's rows (real ones from the cache); one
that compares images gets the uint8 images. Every score is checked: a NaN or infinite value is a
failed scoring (:attr:`Scores.problems`), reported as such and never averaged or dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from unpaired.config.resolved import ResolvedEval
from unpaired.evaluation.features import EvaluationError, FeatureExtractor, real_features, translated
from unpaired.plugin_api.data import Domain, UnpairedData, fingerprints, to_uint8
from unpaired.plugin_api.methods import SOURCE_DOMAIN, TARGET_DOMAIN, Direction
from unpaired.plugin_api.metrics import SHORT_DIRECTION, Score, score_columns
from unpaired.plugin_api.lifecycle import Scoring


@dataclass
class Scores:
    """A set of score columns (``fid_a2b``, ...) and what made them."""

    values: dict[str, float] = field(default_factory=dict)
    scoring: Scoring | None = None
    problems: list[str] = field(default_factory=list)
    """Columns whose value is NaN or infinite, each with what it was: a failed scoring."""
    tracked: bool = False
    """Scores made again for a run that an MLflow run tracks, which gets them at the study's next tracked ``unpaired run``."""


class Scorer:
    """A run's metrics, built, with the feature extractor they share (loaded once, and only when a metric uses features)."""

    def __init__(self, evaluation: ResolvedEval, device: torch.device):
        self.evaluation, self.device = evaluation, device
        self.metrics = evaluation.build_metrics()
        uses_features = any(metric.uses_features for metric in self.metrics.values())
        self._extractor = FeatureExtractor(evaluation.feature_extractor, device, evaluation.batch_size) if uses_features else None
        self.identity = evaluation.identity(self._extractor.cache_identity() if self._extractor else "")

    @property
    def extractor(self) -> FeatureExtractor:
        """The feature extractor; only a scorer whose metrics use features has one."""
        if self._extractor is None:
            raise EvaluationError(f"no metric of {list(self.metrics)} uses features, so this scorer loaded no feature extractor")
        return self._extractor

    def scoring(self, directions: tuple[Direction, ...], data: UnpairedData) -> Scoring:
        """What the scores of ``directions`` on ``data``'s test split carry: this scorer's identity, the extractor by
        name (none when no metric uses features), which way each headline column is better, and the number of test images
        of each domain."""
        columns = {column: metric for name, metric in self.metrics.items() for column in score_columns(name, directions)}
        images = {domain: data.size("test", domain) for domain in SOURCE_DOMAIN.values()}
        return Scoring(
            identity=self.identity,
            extractor=self.evaluation.feature_extractor.name if self._extractor else "",
            lower_is_better={column: metric.lower_is_better for column, metric in columns.items()},
            test_images=images,
            test_data=fingerprints(data, "test"),
            labels={column: metric.label or column.rsplit("_", 1)[0] for column, metric in columns.items()},
            from_features={column: metric.uses_features for column, metric in columns.items()},
            caveats=[caveat for metric in self.metrics.values() if (caveat := metric.caveat(min(images.values())))],
        )

    def score(self, translators: Mapping[Direction, nn.Module], data: UnpairedData, dataset: dict[str, Any]) -> Scores:
        """Every metric of the translations of each direction's test images (``dataset``: the data component's
        ``{"name", **params}``, which keys the real-feature cache)."""
        scores = Scores(scoring=self.scoring(tuple(translators), data))
        for direction, generator in translators.items():
            source, target = SOURCE_DOMAIN[direction], TARGET_DOMAIN[direction]
            fakes = list(translated(generator, data, source, self.evaluation.batch_size, self.device))
            real_images, real_feature_rows = self._reals(data, dataset, target)
            compared = self._compare(real_images, fakes, real_feature_rows)
            for name, score in compared.items():
                _record(scores, f"{name}_{SHORT_DIRECTION[direction]}", score)
        for name in self.metrics:
            columns = score_columns(name, tuple(translators))
            if len(columns) > 1:
                scores.values[columns[-1]] = sum(scores.values[c] for c in columns[:-1]) / (len(columns) - 1)
        return scores

    def _reals(self, data: UnpairedData, dataset: dict[str, Any], domain: Domain) -> tuple[Callable[[], list[Tensor]], Callable[[], Tensor]]:
        """The real test images of ``domain`` and their features, each made only when a metric asks for it."""
        return (lambda: list(data.test_images(domain))), (lambda: real_features(data, dataset, domain, self.extractor))

    def score_images(self, real: list[Tensor], fake: list[Tensor]) -> dict[str, float]:
        """Each metric of ``fake`` against ``real``, [-1, 1] images pre-processed like test images (``unpaired fid``
        reads them with :func:`~unpaired.evaluation.features.folder_images`); a score's details as ``NAME_DETAIL``."""
        values: dict[str, float] = {}
        for name, score in self._compare(lambda: real, fake, lambda: self.extractor(real)).items():
            values |= {name: score.value, **{f"{name}_{detail}": v for detail, v in score.details.items()}}
        return values

    def _compare(self, real: Callable[[], list[Tensor]], fake: list[Tensor], real_features: Callable[[], Tensor]) -> dict[str, Score]:
        """Each metric of ``fake`` against ``real`` (images in [-1, 1]); features and uint8 images are made once each,
        and only when a metric compares them."""
        needed = {metric.uses_features for metric in self.metrics.values()}
        inputs = {}
        if True in needed:
            inputs[True] = (real_features(), self.extractor(fake))
        if False in needed:
            inputs[False] = (to_uint8(torch.stack(real())), to_uint8(torch.stack(fake)))
        # a NaN in its inputs makes a score NaN, so a metric is not asked (FID's matrix square root crashes the process on
        # some CPUs' LAPACK given NaN): the failed scoring is reported as such
        usable = {kind: all(bool(torch.isfinite(tensor.float()).all()) for tensor in pair) for kind, pair in inputs.items()}
        return {
            name: metric.compute(*inputs[metric.uses_features]) if usable[metric.uses_features] else Score(math.nan)
            for name, metric in self.metrics.items()
        }


def _record(scores: Scores, column: str, score: Score) -> None:
    scores.values[column] = float(score.value)
    scores.values |= {f"{column}_{detail}": float(value) for detail, value in score.details.items()}
    if not math.isfinite(score.value):
        scores.problems.append(f"{column} is {score.value}")
