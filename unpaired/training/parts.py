"""Building the networks of a run: a CycleGAN from a resolved variant, a generator from its export."""

from __future__ import annotations

import torch
from torch import nn

from unpaired.config.resolved import ResolvedVariant
from unpaired.plugin_api.registry import Registry
from unpaired.results.records import ExportedGenerator
from unpaired.training.cyclegan import CycleGAN, CycleGANParts
from unpaired.training.weight_init import init_weights


def build_model(variant: ResolvedVariant, device: torch.device) -> CycleGAN:
    """Both generators and discriminators (initialised with ``train.init``), the GAN loss and one image pool
    per domain (seeded from ``train.seed``), as a :class:`CycleGAN` on ``device``. Draws on the global torch
    RNG for the initial weights: seed it first."""
    train = variant.train
    generator_norm, discriminator_norm = variant.generator_norm.build(), variant.discriminator_norm.build()
    networks = [variant.generator.build(generator_norm), variant.generator.build(generator_norm),
                variant.discriminator.build(discriminator_norm), variant.discriminator.build(discriminator_norm)]
    for network in networks:
        init_weights(network, train.init, train.init_gain)
    parts = CycleGANParts(
        *networks,
        gan_loss_A=variant.gan_loss.build(),  # one per discriminator: a loss with state never mixes the domains
        gan_loss_B=variant.gan_loss.build(),
        pool_A=variant.image_pool.build(train.seed * 2),
        pool_B=variant.image_pool.build(train.seed * 2 + 1),
        generators_per_image=generator_norm.per_image,
        discriminators_per_image=discriminator_norm.per_image,
    )
    return CycleGAN(parts, train, device)


def rebuild_generator(exported: ExportedGenerator, registry: Registry) -> nn.Module:
    """The trained generator an export (or a checkpoint) holds, in eval mode on the CPU."""
    norm = registry.build("norm", exported.norm)
    generator = registry.build("generator", exported.generator, norm)
    generator.load_state_dict(exported.state_dict)
    return generator.eval()
