"""What a training method is: the networks it trains, its update step, and its complete state.

A method (CycleGAN, a one-way GAN, CUT, ...) is registered like any component, through
``unpaired_register_methods``. Its factory gets the validated parameters and :class:`MethodParts`:
the spec's components, each built anew on request, and the :class:`Runtime` that places networks
on the run's device and precision. The loop, checkpoints, exports, samples, contract probes,
scoring, tracking and the report ask the method (its loss-term names, its directions, its
translators, its state) and never name a method's parts.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import torch
from torch import Tensor, nn

from unpaired.plugin_api.components import Choice, GanLoss, ImagePool, LossWeightSchedule, TrainingProgress
from unpaired.plugin_api.data import Domain

Direction = Literal["AtoB", "BtoA"]
DIRECTIONS: tuple[Direction, ...] = ("AtoB", "BtoA")
SOURCE_DOMAIN: dict[Direction, Domain] = {"AtoB": "A", "BtoA": "B"}
TARGET_DOMAIN: dict[Direction, Domain] = {"AtoB": "B", "BtoA": "A"}
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AnyOptimizer = TypeVar("AnyOptimizer", bound=torch.optim.Optimizer)


@dataclass(frozen=True)
class Runtime:
    """Where and how a run's networks run: its device, precision, memory format, compilation, and whether its step may be
    captured as a CUDA graph."""

    device: torch.device
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    """The loop may capture the step as a CUDA graph: optimisers are capturable and read their learning rate from the device."""

    def place(self, network: nn.Module) -> nn.Module:
        """Move ``network`` to the device (in channels-last format when asked); return what to call: the
        network itself, or its ``torch.compile``-d wrapper. Keep the network itself for its state.

        Compiled for static shapes: a run calls a network with a few batch sizes that never change (each batched call,
        an epoch's smaller last batch), and a captured step needs static kernels anyway."""
        network.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)  # type: ignore[call-overload]
        return torch.compile(network, dynamic=False) if self.compile else network  # type: ignore[return-value]

    def to_device(self, images: Tensor) -> Tensor:
        """A batch of images on the device, in the networks' memory format."""
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision's autocast context (none for fp32)."""
        dtype = _AUTOCAST_DTYPES[self.precision]
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def adam(self, parameters: Iterable[nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
        """Adam, fused on CUDA and foreach elsewhere (the fast paths; the same update), set up by :meth:`adopt`."""
        fast = {"fused": True} if self.device.type == "cuda" else {"foreach": True}
        return self.adopt(torch.optim.Adam(parameters, lr=lr, betas=betas, **fast))

    def adopt(self, optimizer: AnyOptimizer) -> AnyOptimizer:
        """``optimizer`` set up for this runtime, also after loading a state saved under another: with ``cuda_graphs``,
        capturable and with its learning rate a device tensor, which a captured step reads at every replay (so a
        schedule needs no new capture); otherwise with a plain float learning rate."""
        for group in optimizer.param_groups:
            lr = float(group["lr"])
            if "capturable" in group:
                group["capturable"] = self.cuda_graphs
            group["lr"] = torch.tensor(lr, dtype=torch.float32, device=self.device) if self.cuda_graphs else lr
        return optimizer

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, active only for fp16 (a no-op otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


@dataclass(frozen=True)
class MethodParts:
    """What a method's factory gets: the spec's components, built anew on each call, and the run's settings.

    Networks come initialised (``train.init``) on the CPU: place them with ``runtime.place``. Call the
    makers in a fixed order: each draws its initial weights from the global RNG, seeded per run.
    """

    generator: Callable[[], nn.Module]
    discriminator: Callable[[], nn.Module]
    gan_loss: Callable[[], GanLoss]
    """A new GAN loss; make one per discriminator, so a loss with state never mixes the domains."""
    image_pool: Callable[[int], ImagePool]
    """``image_pool(k)``: the run's k-th pool, with its own seed derived from the run's seed and ``k``."""
    loss_weights: Callable[[], LossWeightSchedule]
    generators_per_image: bool
    """The generators' norm treats each image on its own, so several inputs may share one call."""
    discriminators_per_image: bool
    lr: float
    betas: tuple[float, float]
    runtime: Runtime
    image_size: int
    """The side of the run's square training images (e.g. to learn the shapes of a network's features before training)."""
    initialise: Callable[[nn.Module], nn.Module]
    """Initialise a network the method makes itself (CUT's patch MLPs) as the spec's ``train.init`` says; returns it."""


PART_SLOTS: tuple[str, ...] = ("generator", "discriminator", "gan_loss", "loss_weights", "image_pool")
"""The component slots of a variant that a method's factory builds through :class:`MethodParts` (``Method.uses``)."""
_NORM_OF = {"generator": "generator_norm", "discriminator": "discriminator_norm"}


def unused_slots(method: Any) -> tuple[str, ...]:
    """The variant slots a method class leaves unused: the :data:`PART_SLOTS` missing from its ``uses``, and the norm of
    an unused generator or discriminator. They are not part of its run id, and its variants may not set them."""
    uses = getattr(method, "uses", PART_SLOTS)
    unused = [slot for slot in PART_SLOTS if slot not in uses]
    return (*unused, *(_NORM_OF[slot] for slot in unused if slot in _NORM_OF))


class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any, /) -> Any: ...


class Method(ABC):
    """A training method, returned by ``method`` factories.

    Declare ``loss_terms`` (the names ``train_step`` returns, in the order they are logged) and
    ``directions`` (the translations it learns: ``("AtoB", "BtoA")`` or one of them), set
    ``networks`` to every network it trains by name (as built, not compiled: checkpoints and exports
    read their state), and list in :meth:`stateful` every other part with state (optimisers, grad
    scaler, pools, GAN losses, schedules). The base class saves and restores all of them. Declare
    ``uses`` when the factory leaves some of the variant's component slots unused.
    Register the subclass itself as the factory: its ``directions`` are read before it is built.
    """

    loss_terms: tuple[str, ...]
    directions: tuple[Direction, ...]
    networks: dict[str, nn.Module]
    discriminators: tuple[str, ...] = ()
    """The names of the networks in ``networks`` that judge images (probed against the discriminator contract)."""
    loss_groups: Mapping[str, tuple[str, ...]] = {}
    """The report's training curves: a panel title -> the loss terms summed into it (CycleGAN: ``"cycle (A + B)":
    ("cycle_A", "cycle_B")``). A term in no group gets a panel of its own."""
    uses: tuple[str, ...] = PART_SLOTS
    """The variant's component slots the factory builds, of :data:`PART_SLOTS` (CUT: no ``image_pool`` or
    ``loss_weights``). The others do not enter the run id, and a variant of this method that sets one is refused."""

    @classmethod
    def variant_problems(cls, params: Any, components: Mapping[str, Choice]) -> list[tuple[str, str]]:
        """What rules out training this method with the variant's other ``components`` (by slot: ``generator``,
        ``discriminator``, ...), as ``(field, message)`` pairs, ``field`` a dotted path in the variant
        (``method.nce_layers``). Asked when a spec is validated, with every other problem; none by default."""
        return []

    @classmethod
    def fit_params(cls, params: Any, components: Mapping[str, Choice]) -> tuple[Any, list[str]]:
        """The parameters with what depends on the variant's other ``components`` filled in, and one line for each
        value so chosen (``plan`` shows them). CUT's ``nce_layers`` default to the paper's layers that the generator
        has. Asked when a spec is validated, before :meth:`variant_problems`; the run id, ``spec.json`` and the
        factory get what this returns. By default the parameters as they are, and no line."""
        return params, []

    @abstractmethod
    def translator(self, direction: Direction) -> str:
        """The name (in ``networks``) of the generator that translates ``direction``; scored, exported and shown."""

    @abstractmethod
    def train_step(self, real_A: Tensor, real_B: Tensor, progress: TrainingProgress) -> Mapping[str, Tensor]:
        """One update on a batch of each domain (already on the device); return each of ``loss_terms`` as
        a scalar tensor on the device, weighted as the optimiser saw it. Never synchronise with the host."""

    def capture_problem(self) -> str | None:
        """Why :meth:`train_step` cannot be captured once as a CUDA graph and replayed, or None when it can.

        A capturable step never synchronises with the host (no ``.item()``, ``bool()`` or ``print`` of a device
        tensor), makes no random choice on the host (it draws on the device, from the device's default generator or
        from one of :meth:`generators`), has the same shapes at every step, builds its optimisers with
        ``Runtime.adam`` (their learning rate then lives on the device), and computes on the host nothing that
        differs between steps of equal :meth:`capture_key`. Every replay repeats the captured kernels exactly, so a
        host-side decision taken at capture would silently hold for the rest of training. The default: not declared.
        """
        return "it does not declare its train_step capturable (Method.capture_problem)"

    def capture_key(self, progress: TrainingProgress) -> Hashable:
        """The host-side values that the step's kernels depend on at ``progress`` (CycleGAN: the loss weights in force):
        the captured step is replayed while they stay equal and captured anew when they change. The learning rate is
        not among them: captured optimisers read it from the device. None by default: one capture for the whole run."""
        return None

    def generators(self) -> list[torch.Generator]:
        """The generators besides the device's default one that :meth:`train_step` draws from (an image pool's own):
        a capture registers them with its graph, so that every replay draws new numbers. None by default."""
        return []

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser: the loop sets their learning rate (the schedule is the same for all)."""

    @abstractmethod
    def stateful(self) -> dict[str, Stateful]:
        """Every part besides ``networks`` whose state a resume needs, by a name stable across versions."""

    def set_learning_rate(self, lr: float) -> None:
        """Set every optimiser's learning rate; in place where it is a device tensor (:meth:`Runtime.adopt`)."""
        for optimizer in self.optimizers():
            for group in optimizer.param_groups:
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds: ``{"networks": {name: weights}, "parts": {name: state}}`` of every network and
        of every part :meth:`stateful` lists."""
        return {
            "networks": {name: network.state_dict() for name, network in self.networks.items()},
            "parts": {name: part.state_dict() for name, part in self.stateful().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; a network or part missing from ``state`` is an error, never skipped."""
        groups: dict[str, Mapping[str, Any]] = {"networks": self.networks, "parts": self.stateful()}
        missing = sorted(f"{group}.{name}" for group, parts in groups.items() for name in set(parts) - set(state.get(group, {})))
        if missing:
            raise KeyError(f"the saved state has no {', '.join(missing)}")
        for group, parts in groups.items():
            for name, part in parts.items():
                part.load_state_dict(state[group][name])


def forward_each(network: nn.Module, *images: Tensor, batched: bool) -> tuple[Tensor, ...]:
    """``network(x)`` for each of ``images``. ``batched``: in one call on the images stacked into one batch,
    which gives the same results (up to rounding) when the network's norm is per-image and is faster (fewer,
    larger kernels); pass ``MethodParts.generators_per_image`` (or ``discriminators_per_image``)."""
    if batched and len(images) > 1:
        return tuple(network(torch.cat(images)).split([len(image) for image in images]))
    return tuple(network(image) for image in images)


def fool(discriminator: nn.Module, gan_loss: GanLoss, fake: Tensor, real: Tensor, batched: bool) -> Tensor:
    """The generator's adversarial loss on ``fake``; a relativistic loss (``compares_with_real``) also gets the
    discriminator's scores on ``real``, from the same call when ``batched``."""
    if not gan_loss.compares_with_real:
        return gan_loss.generator_loss(discriminator(fake))
    judged_fake, judged_real = forward_each(discriminator, fake, real, batched=batched)
    return gan_loss.generator_loss(judged_fake, judged_real)


def judge(discriminator: nn.Module, gan_loss: GanLoss, real: Tensor, fake: Tensor, batched: bool) -> tuple[Tensor, Tensor]:
    """The discriminator's loss on ``real`` against ``fake`` (detached, or from a pool), x 0.5 as in the papers, and
    the GAN loss's regulariser (zero when it has none): the terms of a discriminator step, from one call when
    ``batched``. The counterpart of :func:`fool`."""
    judged_real, judged_fake = forward_each(discriminator, real, fake, batched=batched)
    loss = 0.5 * gan_loss.discriminator_loss(judged_real, judged_fake)
    penalty = gan_loss.regularizer(discriminator, real, fake)
    return loss, real.new_zeros(()) if penalty is None else penalty
