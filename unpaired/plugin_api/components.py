"""What a component is, and the interfaces that some component kinds return.

A component is a named factory plus the pydantic model of its parameters. The
registry validates a spec's parameters with that model and calls the factory
with the validated instance (and, for some kinds, objects the engine supplies).

Factories of the kinds below return plain ``torch.nn.Module`` objects
(generators, discriminators, feature extractors) or an instance of one of the
abstract classes here (norms, GAN losses, image pools, loss weights).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, get_args

from pydantic import BaseModel
import torch
from torch import Tensor, nn

ComponentKind = Literal[
    "method", "generator", "discriminator", "norm", "gan_loss", "image_pool", "loss_weights", "dataset", "feature_extractor", "metric", "executor"
]
"""The component kinds: what a plugin can register (each with its own hook, :data:`REGISTER_HOOKS`)."""

REGISTER_HOOKS: dict[ComponentKind, str] = {
    "method": "unpaired_register_methods",
    "generator": "unpaired_register_generators",
    "discriminator": "unpaired_register_discriminators",
    "norm": "unpaired_register_norms",
    "gan_loss": "unpaired_register_gan_losses",
    "image_pool": "unpaired_register_image_pools",
    "loss_weights": "unpaired_register_loss_weights",
    "dataset": "unpaired_register_datasets",
    "feature_extractor": "unpaired_register_feature_extractors",
    "metric": "unpaired_register_metrics",
    "executor": "unpaired_register_executors",
}
"""Each component kind with the hook that registers it (a test checks that they match :data:`ComponentKind`)."""

KINDS: tuple[ComponentKind, ...] = get_args(ComponentKind)
"""The kinds in their order (listings sort by it)."""


@dataclass(frozen=True)
class Component:
    """One registered component: its kind, name, factory, parameter model and one-line description.

    ``distribution`` and ``version`` name the installed package that registered it.
    """

    kind: ComponentKind
    name: str
    factory: Callable[..., Any]
    params_model: type[BaseModel]
    description: str
    distribution: str
    version: str
    default: bool = False
    """True for the component a spec gets when it leaves this kind out (at most one per kind)."""

    def parameters(self) -> dict[str, Any]:
        """Parameter names mapped to their defaults (``"<required>"`` where there is none)."""
        return {
            field: "<required>" if info.is_required() else info.get_default(call_default_factory=True)
            for field, info in self.params_model.model_fields.items()
        }


@dataclass(frozen=True)
class Choice:
    """A component a spec chose, with its parameters validated by the component's own model."""

    component: Component
    params: BaseModel
    qualified: bool = False
    """The spec named it ``distribution:name`` (to pick one of several claimants): kept so in :meth:`as_dict`."""

    @property
    def name(self) -> str:
        """What a spec writes to get this very component again."""
        component = self.component
        return f"{component.distribution}:{component.name}" if self.qualified else component.name

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Call the factory with the parameters and whatever the kind passes besides (see the hookspecs)."""
        return self.component.factory(self.params, *args, **kwargs)

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., **every parameter}`` as plain data (what specs, checkpoints and trackers store)."""
        return {"name": self.name, **self.params.model_dump(mode="json")}

    def identity(self) -> dict[str, Any]:
        """What identifies this choice in a hash: ``distribution:name`` however the spec spelled it, and every parameter."""
        component = self.component
        return {"name": f"{component.distribution}:{component.name}", **self.params.model_dump(mode="json")}


class FeatureEncoder(Protocol):
    """An optional capability of generators: the outputs of layers of the encoder, by name (CUT's PatchNCE loss needs them).

    A generator has it when its registered factory (say, the ``nn.Module`` subclass itself) has a
    ``feature_layers(params) -> Sequence[str]`` attribute: the names of the layers it gives, in the order the network
    computes them. It is read before anything is built, so validation checks a method's layers against it. The
    built network has :meth:`encode`. The built-in ``resnet`` generator has this capability.
    """

    def encode(self, images: Tensor, layers: Sequence[str]) -> list[Tensor]:
        """The output ``(N, C, H', W')`` of each of ``layers`` for ``images``, in the order of ``layers``."""
        ...


def feature_layers(generator: Choice) -> tuple[str, ...] | None:
    """The encoder layers that the chosen generator gives features of (see :class:`FeatureEncoder`); None when it gives none."""
    declared = getattr(generator.component.factory, "feature_layers", None)
    return None if declared is None else tuple(declared(generator.params))


def describe(choice: Choice, kind: str) -> str:
    """``generator 'unet' of unpaired-unet 0.1.0``: how messages name a chosen component and the plugin it comes from."""
    component = choice.component
    return f"{kind} {component.name!r} of {component.distribution} {component.version}"


class Norm(ABC):
    """A normalization layer maker, returned by ``norm`` factories."""

    has_affine_shift: bool
    """True when the layer learns a per-channel shift, so the preceding conv needs no bias."""

    per_image: bool = False
    """True when each image is normalised with its own statistics (instance norm, none), so images
    stacked into one batch do not affect each other and the engine may run several through one call."""

    @abstractmethod
    def __call__(self, channels: int) -> nn.Module:
        """A new normalization layer for ``channels`` feature maps."""


class GanLoss(ABC):
    """An adversarial objective, returned by ``gan_loss`` factories (one instance per discriminator).

    Generator step: the engine calls ``generator_loss`` on D(fake), and also passes D(real) when
    ``compares_with_real`` is True (relativistic losses judge fakes against reals); the discriminator
    gets no gradient there. Discriminator step: it calls ``discriminator_loss`` on D(real) and
    D(pooled fake), multiplies it by 0.5 (as the paper does), and adds ``regularizer`` unhalved:
    a penalty's weight is the whole of its weight. They are logged apart: ``D_A`` / ``D_B`` is the
    halved loss, ``D_reg_A`` / ``D_reg_B`` the regulariser (0 when there is none).
    """

    compares_with_real: bool = False
    """True when ``generator_loss`` needs the discriminator's scores on real images too."""

    @abstractmethod
    def generator_loss(self, fake_pred: Tensor, real_pred: Tensor | None = None) -> Tensor:
        """Scalar loss the generator minimises, given the discriminator's output on fakes (and on reals,
        when ``compares_with_real``)."""

    @abstractmethod
    def discriminator_loss(self, real_pred: Tensor, fake_pred: Tensor) -> Tensor:
        """Scalar loss the discriminator minimises, given its outputs on real and fake images."""

    def regularizer(self, discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor | None:
        """An extra discriminator term such as a gradient penalty; None when there is none."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a loss that keeps state (running averages, ...) needs to continue exactly; saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (override both, or neither)."""


class ImagePool(ABC):
    """A buffer of past generated images that the discriminator is trained on, returned by ``image_pool`` factories.

    Each pool owns its random state (seeded by the engine) so that results never
    depend on global RNGs, and its whole state round-trips through
    ``state_dict``/``load_state_dict`` for exact resume.
    """

    capturable: bool = False
    """True when :meth:`query` decides on the device alone (no host sync, no host-side random choice, the same kernels at
    every call), drawing from the device's default generator or one of :meth:`generators`: a method's step that uses
    the pool can then be captured as a CUDA graph."""

    def generators(self) -> list[torch.Generator]:
        """The generators the pool draws from besides the device's default one (registered with a captured step's graph)."""
        return []

    @abstractmethod
    def query(self, images: Tensor) -> Tensor:
        """Take a batch of new fakes (already detached); return the batch the discriminator sees."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: stored images, fill level, RNG state."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator's loss terms at one point of training (cycle and identity per direction)."""

    adversarial: float
    cycle: float
    identity: float


@dataclass(frozen=True)
class TrainingProgress:
    """Where training stands at a step: what a step-wise loss-weight schedule is given."""

    epoch: int
    """0-based."""
    step: int
    """Steps since the run began, the current one included (1 at the first step)."""
    steps_per_epoch: int
    total_epochs: int

    @property
    def fraction(self) -> float:
        """How much of the whole run is done at this step, in (0, 1]."""
        return self.step / max(self.steps_per_epoch * self.total_epochs, 1)


class LossWeightSchedule(ABC):
    """How loss weights evolve over training, returned by ``loss_weights`` factories.

    Implement ``at`` for weights that change per epoch. For weights that change within an epoch
    (e.g. a warm-up over the first hundred steps), override ``at_step`` too: the engine then asks it
    at every step (a float per step: no device synchronisation).
    """

    @abstractmethod
    def at(self, epoch: int, total_epochs: int) -> LossWeights:
        """The weights in force during ``epoch`` (0-based) of a run of ``total_epochs`` epochs (the constant
        LR epochs plus the decay epochs)."""

    def at_step(self, progress: TrainingProgress) -> LossWeights:
        """The weights in force at one step; by default those of its epoch."""
        return self.at(progress.epoch, progress.total_epochs)

    def state_dict(self) -> dict[str, Any]:
        """What a schedule that keeps state (e.g. one adapting to the losses) needs to continue exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (override both, or neither)."""
