"""The typed shape of registration: the ``register`` callback every registration hook receives, and the factory each
component kind takes (what ``register``'s ``factory`` must be for that kind; the hookspecs state the rules).

A plugin may annotate its factories with these to have a type checker hold them to their kind::

    build_unet: GeneratorFactory[UNetParams] = UNet
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel
from torch import nn

from unpaired.plugin_api.components import GanLoss, ImagePool, LossWeightSchedule, Norm
from unpaired.plugin_api.data import UnpairedData
from unpaired.plugin_api.executors import Executor, ExecutorContext
from unpaired.plugin_api.methods import Method, MethodParts
from unpaired.plugin_api.metrics import Metric


P = TypeVar("P", bound=BaseModel, contravariant=True)


class Register(Protocol):
    """``register(name, factory, params_model, description="", default=False)``: what a registration hook calls once
    per component. ``name``: letters, digits, ``_.-``, unique per kind; ``params_model``: the pydantic model of the
    factory's parameters (unknown keys are always rejected); ``default``: the component a spec gets when it leaves
    the kind out (at most one per kind, or several for metrics)."""

    def __call__(
        self, name: str, factory: Callable[..., Any], params_model: type[BaseModel], description: str = "", default: bool = False
    ) -> None: ...


class MethodFactory(Protocol[P]):
    def __call__(self, params: P, parts: MethodParts) -> Method: ...


class NetworkFactory(Protocol[P]):
    """Generators and discriminators: ``norm`` makes the spec's normalization layers."""

    def __call__(self, params: P, norm: Norm) -> nn.Module: ...


GeneratorFactory = NetworkFactory
DiscriminatorFactory = NetworkFactory


class NormFactory(Protocol[P]):
    def __call__(self, params: P) -> Norm: ...


class GanLossFactory(Protocol[P]):
    def __call__(self, params: P) -> GanLoss: ...


class ImagePoolFactory(Protocol[P]):
    def __call__(self, params: P, seed: int) -> ImagePool: ...


class LossWeightsFactory(Protocol[P]):
    def __call__(self, params: P) -> LossWeightSchedule: ...


class DatasetFactory(Protocol[P]):
    def __call__(self, params: P) -> UnpairedData: ...


class FeatureExtractorFactory(Protocol[P]):
    def __call__(self, params: P) -> nn.Module: ...


class MetricFactory(Protocol[P]):
    def __call__(self, params: P) -> Metric: ...


class ExecutorFactory(Protocol[P]):
    def __call__(self, params: P, context: ExecutorContext) -> Executor: ...
