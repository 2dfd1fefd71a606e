"""Checking a run's plugin networks against their contracts before its first training step.

A dataset must have images in every split of both domains, and as many test images as the run's
metrics need. The generator and the discriminator must take images of the data's size, as worked out on the meta
device (:func:`size_problem`, which ``validate`` runs for every variant). One forward pass on a tiny batch at the run's
image size: a generator must map
(N, 3, H, W) in [-1, 1] to the same shape in [-1, 1];
a discriminator must give finite scores whose first dimension is N; a GAN loss must give finite
scalar tensors that depend on the scores it is given; a norm that claims ``per_image`` must give
the same outputs for a batch of two as for two separate calls. A broken contract stops the run
with a message naming the plugin's distribution, the component and the rule, instead of a tensor
error deep in training or, worse, silently wrong numbers. Nothing here changes the networks or
any RNG.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from unpaired.config.resolved import ResolvedVariant
from unpaired.errors import UnpairedError
from unpaired.evaluation.features import evaluating
from unpaired.plugin_api.components import Choice, GanLoss, describe
from unpaired.plugin_api.data import MAX_SIDE, UnpairedData
from unpaired.plugin_api.methods import Method, Runtime
from unpaired.plugin_api.metrics import Metric, method_directions
from unpaired.training.runtime import TrainingError
from unpaired.training.weight_init import init_weights

PAPER_INIT_GAIN = 0.02
"""The paper's ``train.init_gain``: a network that overflows with a larger gain but not with this one is not at fault."""
PER_IMAGE_TOLERANCE = 1e-4
"""Largest difference, relative to the output's scale, between batched and separate calls of a per-image network."""


class ContractError(UnpairedError):
    """A plugin's component breaks the contract of its kind; the message names the plugin, the component and the rule."""


def check_data(data: UnpairedData, choice: Choice) -> None:
    """Raise :class:`ContractError` when a split of a domain of the dataset ``choice`` built has no image."""
    empty = [f"{split}{domain}" for split in ("train", "test") for domain in ("A", "B") if data.size(split, domain) < 1]
    if empty:
        raise ContractError(
            f"{describe(choice, 'dataset')} has no images in {', '.join(empty)}: every split of both domains needs at least one ({choice.as_dict()})"
        )


def too_few_test_images(data: UnpairedData, metrics: Mapping[str, Metric]) -> str | None:
    """Why the test split of ``data`` is too small for ``metrics`` (each scores at least its ``min_images`` of each
    domain); None when it is not."""
    fewest = min(data.size("test", domain) for domain in ("A", "B"))
    short = [f"{name} needs at least {metric.min_images}" for name, metric in metrics.items() if fewest < metric.min_images]
    if not short:
        return None
    which = "it" if len(short) == 1 else "them"
    return f"the test split has {fewest} image(s) in a domain, and {', '.join(short)}: use more test images, or leave {which} out of eval.metrics"


def check_gan_loss(choice: Choice) -> None:
    """Raise :class:`ContractError` when a fresh instance of the GAN loss ``choice`` does not return finite scalar tensors
    that depend on the discriminator scores it is given (what backpropagation needs)."""
    loss: GanLoss = choice.build()
    who = describe(choice, "gan_loss")
    scores = [torch.linspace(-1.0, 1.0, 32).reshape(2, 1, 4, 4).requires_grad_() for _ in range(2)]
    generator_loss = loss.generator_loss(scores[0], scores[1]) if loss.compares_with_real else loss.generator_loss(scores[0])
    results = {"generator_loss": generator_loss, "discriminator_loss": loss.discriminator_loss(scores[1], scores[0])}
    for call, value in results.items():
        if not isinstance(value, Tensor) or value.numel() != 1 or not value.requires_grad or not torch.isfinite(value).all():
            got = (
                f"a {type(value).__name__}"
                if not isinstance(value, Tensor)
                else (f"a tensor of shape {tuple(value.shape)}, requires_grad={value.requires_grad}, finite={bool(torch.isfinite(value).all())}")
            )
            raise ContractError(
                f"{who}: {call} must return a finite scalar tensor computed from the scores it is given "
                f"(with torch operations, so that gradients flow); it returned {got}"
            )


def size_problem(variant: ResolvedVariant, size: int) -> tuple[str, str] | None:
    """``(component, why)`` when the variant's generator or discriminator cannot take the data's images of ``size`` px (a
    generator returning another size, a discriminator too deep for them), with the nearest sizes both take. Tried on
    the meta device, where shapes are worked out and nothing is computed or allocated, so a study checks every variant
    in moments; None when they take ``size``, or when no size near it works there either (a plugin that cannot be
    built or run on the meta device: the check on the run's device, :func:`check_contracts`, tells then)."""
    try:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):  # a plugin drawing its weights leaves the run's RNG as it was
            generator = variant.generator.build(variant.generator_norm.build())
            discriminator = variant.discriminator.build(variant.discriminator_norm.build())
    except Exception:  # noqa: BLE001 - whatever a plugin raises on the meta device, the real check will say it
        return None
    networks = {"generator": generator.eval(), "discriminator": discriminator.eval()}
    if (found := _meta_fault(networks, size)) is None:
        return None
    nearest = _nearest_sizes(size, lambda side: _meta_fault(networks, side) is None)
    if not nearest:
        return None
    kind, how = found
    images, sizes = f"the data's {size} px images (its crop size)", " or ".join(map(str, nearest))
    return kind, f"{describe(getattr(variant, kind), kind)} {how.format(images=images)}; the nearest size this variant's networks take is {sizes} px"


def _meta_fault(networks: Mapping[str, nn.Module], side: int) -> tuple[str, str] | None:
    """The first of ``networks`` (a generator, a discriminator; on the meta device) that cannot take two images of
    ``side`` px, and how it fails, with ``{images}`` standing for them."""
    for kind, network in networks.items():
        try:
            shape = tuple(network(torch.empty(2, 3, side, side, device="meta")).shape)
        except Exception as error:  # noqa: BLE001 - a size it cannot take, or the meta device: other sizes tell which
            return kind, f"cannot take {{images}} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        if kind == "generator" and shape != (2, 3, side, side):
            return kind, f"turns {{images}} into {shape[-1]}x{shape[-2]} px ones" if len(shape) == 4 else f"turns {{images}} into shape {shape}"
        if kind == "discriminator" and (not shape or shape[0] != 2):
            return kind, f"gives scores of shape {shape} for two of {{images}}"
    return None


def _nearest_sizes(size: int, works: Callable[[int], bool]) -> list[int]:
    """The largest size below ``size`` within 32 px that ``works``, and the smallest above it: within 32 px, then among
    multiples of 16 15 % apart up to :data:`MAX_SIDE` (a deep discriminator may need several times the size)."""
    larger = [size + step for step in range(1, 33)]
    while (side := max(larger[-1] + 16, int(larger[-1] * 1.15)) // 16 * 16) <= MAX_SIDE:
        larger.append(side)
    below = next((side for side in range(size - 1, max(0, size - 33), -1) if works(side)), None)
    above = next((side for side in larger if side <= MAX_SIDE and works(side)), None)
    return [side for side in (below, above) if side is not None]


def check_contracts(method: Method, variant: ResolvedVariant, size: int, runtime: Runtime) -> None:
    """Raise :class:`ContractError` for the first contract the run's method, generator, discriminator, GAN loss or norms break."""
    device = runtime.device
    _check_method(method, variant)
    if problem := size_problem(variant, size):
        raise ContractError(problem[1])
    with torch.random.fork_rng(devices=[]):
        check_gan_loss(variant.gan_loss)
    images = runtime.to_device(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    generator = method.networks[method.translator(method.directions[0])]
    discriminators = [method.networks[name] for name in method.discriminators[:1]]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        with evaluating([generator, *discriminators]), runtime.autocast():
            fake = generator(images).float()
            if not torch.isfinite(fake).all():
                _blame_initialisation(generator, images, variant, "generator")
            _check_generator(fake, images, describe(variant.generator, "generator"))
            for discriminator in discriminators:
                score = discriminator(images).float()
                if not torch.isfinite(score).all():
                    _blame_initialisation(discriminator, images, variant, "discriminator")
                if score.ndim == 0 or score.shape[0] != len(images) or not torch.isfinite(score).all():
                    raise ContractError(
                        f"{describe(variant.discriminator, 'discriminator')} must give finite scores with one row per "
                        f"image (first dimension {len(images)}); it gave shape {tuple(score.shape)}, finite: "
                        f"{bool(torch.isfinite(score).all())}"
                    )
        checked = [(generator, variant.generator_norm, "generator networks")]
        checked += [(discriminator, variant.discriminator_norm, "discriminator networks") for discriminator in discriminators]
        for network, norm, side in checked:
            if getattr(norm.build(), "per_image", False):
                _check_per_image(network, images, norm, side)


def _blame_initialisation(network: nn.Module, images: Tensor, variant: ResolvedVariant, kind: str) -> None:
    """Raise :class:`TrainingError` naming ``train.init_gain`` when ``network``, whose outputs for ``images`` are not
    finite, gives finite ones once initialised with the paper's gain: then the spec is at fault, not the plugin."""
    train = variant.train
    if train.init_gain == PAPER_INIT_GAIN:
        return
    trial = copy.deepcopy(network)
    init_weights(trial, train.init, PAPER_INIT_GAIN)
    if torch.isfinite(trial(images).float()).all():
        raise TrainingError(
            f"train.init_gain {train.init_gain:g} (train.init {train.init}) makes the {kind}'s outputs for random images "
            f"overflow to values that are not finite, where the paper's {PAPER_INIT_GAIN} keeps them finite: lower train.init_gain"
        )


def _check_method(method: Method, variant: ResolvedVariant) -> None:
    """What a method declares must hold together: it is a Method, its directions are known and each has a network."""
    who = describe(variant.method, "method")
    if not isinstance(method, Method):
        raise ContractError(f"{who} must return an unpaired.plugin_api.Method from its factory; it returned {type(method).__name__}")
    if not method.directions or not set(method.directions) <= {"AtoB", "BtoA"}:
        raise ContractError(f"{who} must translate AtoB, BtoA or both; it declares directions {method.directions!r}")
    declared = method_directions(variant.method.component.factory)  # what validation planned the scores by
    if tuple(method.directions) != declared:
        raise ContractError(
            f"{who} translates {', '.join(method.directions)}, but its registered factory says {', '.join(declared)}: "
            "register the Method subclass itself, whose class attribute `directions` is read before it is built"
        )
    for name in [method.translator(d) for d in method.directions] + list(method.discriminators):
        if name not in method.networks:
            raise ContractError(f"{who} names the network {name!r}, which is not in its networks ({', '.join(method.networks)})")


def _check_generator(fake: Tensor, images: Tensor, who: str) -> None:
    if fake.shape != images.shape:
        raise ContractError(f"{who} must map images (N, 3, H, W) to the same shape; it turned {tuple(images.shape)} into {tuple(fake.shape)}")
    if not torch.isfinite(fake).all():
        raise ContractError(f"{who} must give finite images; it gave NaN or inf for random inputs")
    low, high = float(fake.min()), float(fake.max())
    if low < -1.001 or high > 1.001:
        raise ContractError(f"{who} must give images in [-1, 1] (e.g. end with tanh); it gave values in [{low:.3g}, {high:.3g}]")


@contextlib.contextmanager
def exact_kernels() -> Iterator[None]:
    """GPU kernels chosen for exact fp32 results rather than speed: no TF32 and no autotuned algorithm, whose choice
    differs between a batch of two and a batch of one (and between runs sharing a GPU) by more than a probe's tolerance."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def _check_per_image(network: nn.Module, images: Tensor, norm: Choice, side: str) -> None:
    """In training mode (where batch statistics would couple images), each call on a fresh copy (a layer that
    updates itself on every call, like spectral norm, must not make the calls differ), without dropout."""

    def fresh() -> nn.Module:
        trial = copy.deepcopy(network).train()
        for module in trial.modules():
            if isinstance(module, (nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
                module.eval()
        return trial

    with exact_kernels():
        together = fresh()(images).float()
        apart = torch.cat([fresh()(image[None]) for image in images]).float()
    scale = max(float(together.abs().max()), 1e-6)
    if float((together - apart).abs().max()) > PER_IMAGE_TOLERANCE * scale:
        raise ContractError(
            f"{describe(norm, 'norm')} claims per_image = True, but the {side} it normalises give different outputs "
            "for a batch of two than for each image alone: its statistics couple the images of a batch. "
            "Set per_image = False (the engine then gives each image its own call)."
        )
