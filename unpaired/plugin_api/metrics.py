"""What a metric is: how translated test images are scored against the real ones of their target domain.

A metric is registered like any component, through ``unpaired_register_metrics``. It scores each
direction the run's method translates, on the whole test split: the translations of the source
domain's test images against the target domain's test images. A metric named ``fid`` gives the
columns ``fid_a2b`` and ``fid_b2a`` (plus ``fid_mean``, their mean, when the method translates both
ways), and ``fid_a2b_<detail>`` for each detail it adds (e.g. a standard deviation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from unpaired.plugin_api.methods import Direction


@dataclass(frozen=True)
class Score:
    """A metric's value for one direction, and any further numbers it reports (``{"std": ...}``)."""

    value: float
    details: dict[str, float] = field(default_factory=dict)


class Metric(ABC):
    """A metric, returned by ``metric`` factories.

    ``uses_features`` True (the default): :meth:`compute` gets the feature rows ``(N, D)`` of the study's
    feature extractor (``eval.feature_extractor``), in float32 whatever the device and the run's precision.
    False: it gets the uint8 RGB images ``(N, 3, H, W)`` at the test resolution instead.
    """

    lower_is_better: bool = True
    """Whether a smaller value is a better translation (FID, KID: yes); compare and the report rank by it."""
    uses_features: bool = True
    label: str = ""
    """How compare and the report title its scores (``FID``); its registered name when empty. Tables head a score made
    from features with the feature extractor's name too."""
    min_images: int = 1
    """The fewest test images of each domain :meth:`compute` can score (FID, KID: 2); a study whose test split has fewer
    is refused before anything trains."""

    def caveat(self, test_images: int) -> str | None:
        """A caution that scores from ``test_images`` images (the smaller test domain) need, which the answer of
        compare and the report then carries (FID: biased on fewer images than its feature dimensions); None by default."""
        return None

    @abstractmethod
    def compute(self, real: Tensor, fake: Tensor) -> Score:
        """Score ``fake`` (the translated test images of the source domain) against ``real`` (the test images
        of the target domain). Deterministic: the same inputs give the same score."""


SHORT_DIRECTION = {"AtoB": "a2b", "BtoA": "b2a"}


def score_columns(metric: str, directions: tuple[str, ...]) -> list[str]:
    """The headline columns a metric named ``metric`` gives for a method translating ``directions``: one per
    direction, then their mean when there are two (``fid_a2b``, ``fid_b2a``, ``fid_mean``)."""
    columns = [f"{metric}_{SHORT_DIRECTION[d]}" for d in directions]
    return columns + [f"{metric}_mean"] if len(columns) > 1 else columns


def method_directions(factory: object) -> tuple[Direction, ...]:
    """The directions a method's factory translates, read before it is built: a ``Method`` subclass registered as
    its own factory declares them as a class attribute (both directions when a factory does not say)."""
    return tuple(getattr(factory, "directions", ("AtoB", "BtoA")))


def best_columns(column: str) -> tuple[str, str]:
    """The result's columns of the best epoch scored during training by ``column``: its score, and its epoch."""
    return f"{column}_best", f"{column}_best_epoch"
