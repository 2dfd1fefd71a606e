"""The CycleGAN update (Zhu et al. 2017) as the paper and the official code do it, on parts built elsewhere.

One step: the generators minimise the adversarial loss of each direction, the L1 cycle loss of
each direction and (when its weight is > 0) the L1 identity loss, with the discriminators frozen;
then each discriminator minimises its GAN loss on real images vs fakes from its image pool,
multiplied by 0.5. One Adam optimiser for both generators, one for both discriminators.

Loss terms are named by the domain of the image judged or reconstructed: ``G_adv_A`` is the
adversarial loss of G_BA (its fakes are judged by D_A), ``cycle_A`` is |G_BA(G_AB(A)) - A|,
``idt_A`` is |G_BA(A) - A|, ``D_A`` is D_A's loss on real A vs pooled fake A, ``D_reg_A`` the GAN
loss's regulariser of D_A (e.g. a gradient penalty; 0 when it has none). They are weighted as in
the total the optimiser sees; ``D_A`` and ``D_B`` include the 0.5, the regularisers are not halved.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unpaired.config.spec import TrainConfig
from unpaired.plugin_api.components import GanLoss, ImagePool, LossWeights

LOSS_TERMS = ("G_adv_A", "G_adv_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B", "D_reg_A", "D_reg_B")
_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class CycleGANParts:
    """The built components a CycleGAN trains: networks already initialised, on the CPU."""

    G_AB: nn.Module
    G_BA: nn.Module
    D_A: nn.Module
    D_B: nn.Module
    gan_loss_A: GanLoss
    """The adversarial objective of D_A (and of G_BA, whose fakes D_A judges); one instance per discriminator."""
    gan_loss_B: GanLoss
    pool_A: ImagePool
    pool_B: ImagePool
    generators_per_image: bool
    """The generators' norm treats each image on its own, so several inputs may share one call."""
    discriminators_per_image: bool


class CycleGAN:
    """Two generators, two discriminators, their optimisers, image pools and losses, and the update step."""

    def __init__(self, parts: CycleGANParts, train: TrainConfig, device: torch.device):
        self.device, self.channels_last = device, train.channels_last
        self.networks: dict[str, nn.Module] = {"G_AB": parts.G_AB, "G_BA": parts.G_BA, "D_A": parts.D_A, "D_B": parts.D_B}
        for network in self.networks.values():
            network.to(device, memory_format=torch.channels_last if train.channels_last else torch.preserve_format)
        run = {name: torch.compile(net) if train.compile else net for name, net in self.networks.items()}
        self.G_AB, self.G_BA, self.D_A, self.D_B = run["G_AB"], run["G_BA"], run["D_A"], run["D_B"]
        self.gan_loss_A, self.gan_loss_B, self.pool_A, self.pool_B = parts.gan_loss_A, parts.gan_loss_B, parts.pool_A, parts.pool_B
        self.batch_generator_calls, self.batch_discriminator_calls = parts.generators_per_image, parts.discriminators_per_image

        adam = {"lr": train.lr, "betas": train.betas, **({"fused": True} if device.type == "cuda" else {"foreach": True})}
        self.opt_G = torch.optim.Adam(itertools.chain(parts.G_AB.parameters(), parts.G_BA.parameters()), **adam)
        self.opt_D = torch.optim.Adam(itertools.chain(parts.D_A.parameters(), parts.D_B.parameters()), **adam)
        self.autocast_dtype = _AUTOCAST_DTYPES[train.precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=train.precision == "fp16")
        # The first step at which each loss term was non-finite (-1: never), kept on the device: no sync per step.
        self.first_bad_step = torch.full((len(LOSS_TERMS),), -1, dtype=torch.long, device=device)
        self.step_counter = torch.zeros((), dtype=torch.long, device=device)

    def discriminators(self) -> list[nn.Module]:
        return [self.networks["D_A"], self.networks["D_B"]]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def set_learning_rate(self, lr: float) -> None:
        for optimizer in (self.opt_G, self.opt_D):
            for group in optimizer.param_groups:
                group["lr"] = lr

    def to_device(self, images: Tensor) -> Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    @staticmethod
    def forward_each(network: nn.Module, *images: Tensor, batched: bool) -> tuple[Tensor, ...]:
        """``network(x)`` for each of ``images``. ``batched``: in one call on the images stacked into one
        batch, which gives the same results (up to rounding) when the network's norm is per-image,
        and is faster (fewer, larger kernels)."""
        if batched and len(images) > 1:
            return network(torch.cat(images)).split([len(image) for image in images])
        return tuple(network(image) for image in images)

    def fool(self, discriminator: nn.Module, gan_loss: GanLoss, fake: Tensor, real: Tensor) -> Tensor:
        """The generator's adversarial loss on ``fake``; a relativistic loss also gets D(real), from the same call."""
        if not gan_loss.compares_with_real:
            return gan_loss.generator_loss(discriminator(fake))
        judged_fake, judged_real = self.forward_each(discriminator, fake, real, batched=self.batch_discriminator_calls)
        return gan_loss.generator_loss(judged_fake, judged_real)

    def generator_step(self, real_A: Tensor, real_B: Tensor, weights: LossWeights) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Update both generators on adversarial + cycle (+ identity, when its weight > 0) losses.
        The discriminators get no gradient. Returns the detached fakes (A, B) and the six weighted terms."""
        for network in self.discriminators():
            network.requires_grad_(False)
        identity, batched = weights.identity > 0, self.batch_generator_calls
        keep_B, keep_A = ([real_B], [real_A]) if identity else ([], [])  # a generator given its target domain should change nothing
        with self.autocast():  # three calls: fakes, identities and a cycle share batches where the norm allows
            fake_B, *same_B = self.forward_each(self.G_AB, real_A, *keep_B, batched=batched)
            fake_A, *same_A, cycled_A = self.forward_each(self.G_BA, real_B, *keep_A, fake_B, batched=batched)
            (cycled_B,) = self.forward_each(self.G_AB, fake_A, batched=batched)
            terms = [
                weights.adversarial * self.fool(self.D_A, self.gan_loss_A, fake_A, real_A),
                weights.adversarial * self.fool(self.D_B, self.gan_loss_B, fake_B, real_B),
                weights.cycle * F.l1_loss(cycled_A, real_A),
                weights.cycle * F.l1_loss(cycled_B, real_B),
            ]
            if identity:
                terms += [weights.identity * F.l1_loss(same_A[0], real_A), weights.identity * F.l1_loss(same_B[0], real_B)]
            else:
                terms += [real_A.new_zeros(()), real_A.new_zeros(())]
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler.scale(sum(terms)).backward()
        self.scaler.step(self.opt_G)
        for network in self.discriminators():
            network.requires_grad_(True)
        return fake_A.detach(), fake_B.detach(), terms

    def discriminator_step(self, real_A: Tensor, real_B: Tensor, fake_A: Tensor, fake_B: Tensor) -> list[Tensor]:
        """Update both discriminators on real vs pooled fake images, loss x 0.5, plus the GAN loss's regulariser.
        Returns the four terms: D_A, D_B, then their regularisers (zeros when the loss has none)."""
        pooled_A, pooled_B = self.pool_A.query(fake_A), self.pool_B.query(fake_B)
        losses, penalties = [], []
        with self.autocast():
            for disc, gan_loss, real, fake in ((self.D_A, self.gan_loss_A, real_A, pooled_A), (self.D_B, self.gan_loss_B, real_B, pooled_B)):
                judged_real, judged_fake = self.forward_each(disc, real, fake, batched=self.batch_discriminator_calls)
                losses.append(0.5 * gan_loss.discriminator_loss(judged_real, judged_fake))
                penalty = gan_loss.regularizer(disc, real, fake)
                penalties.append(real.new_zeros(()) if penalty is None else penalty)
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler.scale(sum(losses) + sum(penalties)).backward()
        self.scaler.step(self.opt_D)
        self.scaler.update()
        return losses + penalties

    def train_step(self, real_A: Tensor, real_B: Tensor, weights: LossWeights) -> Tensor:
        """One CycleGAN iteration; returns the 10 loss terms (``LOSS_TERMS`` order) on the device, without syncing."""
        fake_A, fake_B, g_terms = self.generator_step(real_A, real_B, weights)
        d_terms = self.discriminator_step(real_A, real_B, fake_A, fake_B)
        values = torch.stack([t.detach().float() for t in g_terms + d_terms])
        self.step_counter += 1
        newly_bad = ~torch.isfinite(values) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(newly_bad, self.step_counter, self.first_bad_step)
        return values

    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": {name: net.state_dict() for name, net in self.networks.items()},
            "optimizers": {"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict()},
            "scaler": self.scaler.state_dict(),
            "pools": {"A": self.pool_A.state_dict(), "B": self.pool_B.state_dict()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, net in self.networks.items():
            net.load_state_dict(state["networks"][name])
        self.opt_G.load_state_dict(state["optimizers"]["G"])
        self.opt_D.load_state_dict(state["optimizers"]["D"])
        self.scaler.load_state_dict(state["scaler"])
        self.pool_A.load_state_dict(state["pools"]["A"])
        self.pool_B.load_state_dict(state["pools"]["B"])
