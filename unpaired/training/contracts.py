"""Checking a run's plugin networks against their contracts before its first training step.

One forward pass on a tiny batch at the run's image size: a generator must map (N, 3, H, W) in
[-1, 1] to the same shape in [-1, 1]; a discriminator must give finite scores whose first
dimension is N; a norm that claims ``per_image`` must give the same outputs for a batch of two as
for two separate calls. A broken contract stops the run with a message naming the plugin's
distribution, the component and the rule, instead of a tensor error deep in training or,
worse, silently wrong numbers. Nothing here changes the networks or any RNG.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from unpaired.config.resolved import ResolvedVariant
from unpaired.errors import UnpairedError
from unpaired.evaluation.fid import evaluating
from unpaired.plugin_api.components import Choice
from unpaired.training.cyclegan import CycleGAN

PER_IMAGE_TOLERANCE = 1e-4
"""Largest difference, relative to the output's scale, between batched and separate calls of a per-image network."""


class ContractError(UnpairedError):
    """A plugin's component breaks the contract of its kind; the message names the plugin, the component and the rule."""


def describe_component(choice: Choice, kind: str) -> str:
    """``generator 'unet' of unpaired-unet 0.1.0``: how contract errors name a component."""
    component = choice.component
    return f"{kind} {component.name!r} of {component.distribution} {component.version}"


def check_contracts(model: CycleGAN, variant: ResolvedVariant, size: int) -> None:
    """Raise :class:`ContractError` for the first contract the run's generator, discriminator or norms break."""
    device = model.device
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images = model.to_device(images)
    generator, discriminator = model.networks["G_AB"], model.networks["D_A"]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        with evaluating([generator, discriminator]), model.autocast():
            fake = generator(images).float()
            _check_generator(fake, images, describe_component(variant.generator, "generator"))
            scores = discriminator(images).float()
        if scores.ndim == 0 or scores.shape[0] != len(images) or not torch.isfinite(scores).all():
            raise ContractError(f"{describe_component(variant.discriminator, 'discriminator')} must give finite scores with one row per image "
                                f"(first dimension {len(images)}); it gave shape {tuple(scores.shape)}, finite: {bool(torch.isfinite(scores).all())}")
        for network, norm, side in ((generator, variant.generator_norm, "generator networks"), (discriminator, variant.discriminator_norm, "discriminator networks")):
            if getattr(norm.build(), "per_image", False):
                _check_per_image(network, images, norm, side)


def _check_generator(fake: Tensor, images: Tensor, who: str) -> None:
    if fake.shape != images.shape:
        raise ContractError(f"{who} must map images (N, 3, H, W) to the same shape; it turned {tuple(images.shape)} into {tuple(fake.shape)}")
    if not torch.isfinite(fake).all():
        raise ContractError(f"{who} must give finite images; it gave NaN or inf for random inputs")
    low, high = float(fake.min()), float(fake.max())
    if low < -1.001 or high > 1.001:
        raise ContractError(f"{who} must give images in [-1, 1] (e.g. end with tanh); it gave values in [{low:.3g}, {high:.3g}]")


def _check_per_image(network: nn.Module, images: Tensor, norm: Choice, side: str) -> None:
    """In training mode (where batch statistics would couple images), each call on a fresh copy (a layer that
    updates itself on every call, like spectral norm, must not make the calls differ), without dropout."""

    def fresh() -> nn.Module:
        trial = copy.deepcopy(network).train()
        for module in trial.modules():
            if isinstance(module, (nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
                module.eval()
        return trial

    together = fresh()(images).float()
    apart = torch.cat([fresh()(image[None]) for image in images]).float()
    scale = max(float(together.abs().max()), 1e-6)
    if float((together - apart).abs().max()) > PER_IMAGE_TOLERANCE * scale:
        raise ContractError(f"{describe_component(norm, 'norm')} claims per_image = True, but the {side} it normalises give different outputs "
                            "for a batch of two than for each image alone: its statistics couple the images of a batch. "
                            "Set per_image = False (the engine then gives each image its own call).")
