"""Building the method of a run, with every part it trains, from a resolved variant."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from unpaired.config.resolved import ResolvedVariant
from unpaired.plugin_api.methods import Method, MethodParts, Runtime
from unpaired.training.graphs import runtime_problem
from unpaired.training.weight_init import init_weights


def runtime_of(variant: ResolvedVariant, device: torch.device) -> Runtime:
    """How the variant's networks run on ``device``; ready for CUDA graphs wherever ``train.cuda_graphs`` may capture."""
    train = variant.train
    runtime = Runtime(device, train.precision, train.channels_last, train.compile)
    return dataclasses.replace(runtime, cuda_graphs=train.cuda_graphs != "off" and runtime_problem(runtime, train.cuda_graphs) is None)


def method_parts(variant: ResolvedVariant, device: torch.device, image_size: int) -> MethodParts:
    """The spec's components as makers for the method: networks initialised with ``train.init``, image pools seeded
    from ``train.seed`` (pool k of a run: ``2 * seed + k``, as CycleGAN's two pools always were)."""
    train = variant.train
    generator_norm, discriminator_norm = variant.generator_norm.build(), variant.discriminator_norm.build()

    def initialised(network: nn.Module) -> nn.Module:
        init_weights(network, train.init, train.init_gain)
        return network

    return MethodParts(
        generator=lambda: initialised(variant.generator.build(generator_norm)),
        discriminator=lambda: initialised(variant.discriminator.build(discriminator_norm)),
        gan_loss=variant.gan_loss.build,
        image_pool=lambda k: variant.image_pool.build(train.seed * 2 + k),
        loss_weights=variant.loss_weights.build,
        generators_per_image=generator_norm.per_image,
        discriminators_per_image=discriminator_norm.per_image,
        lr=train.lr,
        betas=train.betas,
        runtime=runtime_of(variant, device),
        image_size=image_size,
        initialise=initialised,
    )


def build_method(variant: ResolvedVariant, device: torch.device, image_size: int) -> Method:
    """The variant's method with every part it trains, on ``device``, for training images of ``image_size`` px.
    Draws on the global torch RNG for the initial weights: seed it first."""
    return variant.method.build(method_parts(variant, device, image_size))
