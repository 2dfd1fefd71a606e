"""CycleGAN (Zhu et al. 2017): two generators, two discriminators, adversarial + cycle + identity losses.

Loss terms are named by the domain of the image judged or reconstructed: ``G_adv_A`` is the adversarial
loss of G_BA (its fakes are judged by D_A), ``cycle_A`` is |G_BA(G_AB(A)) - A|, ``idt_A`` is |G_BA(A) - A|,
``D_A`` is D_A's loss on real A vs pooled fake A (x 0.5), ``D_reg_A`` its GAN loss's regulariser (0 when
it has none, never halved). Each is weighted as in the total the optimiser sees.
"""

from __future__ import annotations

import itertools
from typing import cast

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor

from unpaired.plugin_api import LossWeights, LossWeightSchedule, Method, MethodParts, TrainingProgress, fool, forward_each, hookimpl, judge


class CycleGANParams(BaseModel):
    """CycleGAN's loss weights come from the spec's ``loss_weights``, its parts from the other slots."""


class CycleGAN(Method):
    loss_terms = ("G_adv_A", "G_adv_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B", "D_reg_A", "D_reg_B")
    loss_groups = {
        "adversarial, generators (A + B)": ("G_adv_A", "G_adv_B"),
        "cycle (A + B)": ("cycle_A", "cycle_B"),
        "identity (A + B)": ("idt_A", "idt_B"),
        "discriminators (A + B)": ("D_A", "D_B"),
        "discriminator regularisers (A + B)": ("D_reg_A", "D_reg_B"),
    }
    directions = ("AtoB", "BtoA")
    discriminators = ("D_A", "D_B")

    def __init__(self, params: CycleGANParams, parts: MethodParts):
        self.networks = {"G_AB": parts.generator(), "G_BA": parts.generator(), "D_A": parts.discriminator(), "D_B": parts.discriminator()}
        self.G_AB, self.G_BA, self.D_A, self.D_B = (parts.runtime.place(net) for net in self.networks.values())
        self.gan_loss_A, self.gan_loss_B = parts.gan_loss(), parts.gan_loss()
        self.pool_A, self.pool_B = parts.image_pool(0), parts.image_pool(1)
        self.schedule, self.runtime = parts.loss_weights(), parts.runtime
        self.batch_generator_calls = parts.generators_per_image
        self.batch_discriminator_calls = parts.discriminators_per_image
        G, D = (itertools.chain(*(self.networks[n].parameters() for n in pair)) for pair in (("G_AB", "G_BA"), ("D_A", "D_B")))
        self.opt_G = parts.runtime.adam(G, parts.lr, parts.betas)
        self.opt_D = parts.runtime.adam(D, parts.lr, parts.betas)
        self.scaler = parts.runtime.grad_scaler()

    def translator(self, direction: str) -> str:
        return {"AtoB": "G_AB", "BtoA": "G_BA"}[direction]

    def capture_problem(self) -> str | None:
        """Capturable when its pools decide on the device and its loss weights stay the same within an epoch."""
        pool = next((pool for pool in (self.pool_A, self.pool_B) if not pool.capturable), None)
        if pool is not None:
            return f"its image pool {type(pool).__name__} decides on the host (ImagePool.capturable)"
        if type(self.schedule).at_step is not LossWeightSchedule.at_step:
            return f"its loss weights ({type(self.schedule).__name__}) change from step to step (LossWeightSchedule.at_step)"
        return None

    def capture_key(self, progress: TrainingProgress) -> LossWeights:
        return self.schedule.at_step(progress)  # a new capture when an epoch's weights differ (identity_decay)

    def generators(self) -> list[torch.Generator]:
        return [*self.pool_A.generators(), *self.pool_B.generators()]

    def optimizers(self) -> list:
        return [self.opt_G, self.opt_D]

    def stateful(self) -> dict:
        return {
            "opt_G": self.opt_G,
            "opt_D": self.opt_D,
            "scaler": self.scaler,
            "pool_A": self.pool_A,
            "pool_B": self.pool_B,
            "gan_loss_A": self.gan_loss_A,
            "gan_loss_B": self.gan_loss_B,
            "loss_weights": self.schedule,
        }

    def freeze_discriminators(self, frozen: bool) -> None:
        for name in self.discriminators:
            self.networks[name].requires_grad_(not frozen)

    def train_step(self, real_A: Tensor, real_B: Tensor, progress: TrainingProgress) -> dict[str, Tensor]:
        fake_A, fake_B, terms = self.generator_step(real_A, real_B, self.schedule.at_step(progress))
        return terms | self.discriminator_step(real_A, real_B, fake_A, fake_B)

    def generator_step(self, real_A: Tensor, real_B: Tensor, w: LossWeights) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Both generators, discriminators frozen; passes share one call where the norm is per-image. Returns the fakes."""
        idt, G_batched = w.identity > 0, self.batch_generator_calls
        keep_B, keep_A = ([real_B], [real_A]) if idt else ([], [])  # given its own target domain, a generator should change nothing
        self.freeze_discriminators(True)
        with self.runtime.autocast():
            fake_B, *same_B = forward_each(self.G_AB, real_A, *keep_B, batched=G_batched)  # G_AB(A), G_AB(B)
            fake_A, *same_A, rec_A = forward_each(self.G_BA, real_B, *keep_A, fake_B, batched=G_batched)  # G_BA(B), G_BA(A), G_BA(G_AB(A))
            (rec_B,) = forward_each(self.G_AB, fake_A, batched=G_batched)  # G_AB(G_BA(B))
            t = {
                "G_adv_A": w.adversarial * fool(self.D_A, self.gan_loss_A, fake_A, real_A, self.batch_discriminator_calls),  # L_GAN(G_BA, D_A)
                "G_adv_B": w.adversarial * fool(self.D_B, self.gan_loss_B, fake_B, real_B, self.batch_discriminator_calls),  # L_GAN(G_AB, D_B)
                "cycle_A": w.cycle * F.l1_loss(rec_A, real_A),  # λ |G_BA(G_AB(A)) - A|
                "cycle_B": w.cycle * F.l1_loss(rec_B, real_B),  # λ |G_AB(G_BA(B)) - B|
                "idt_A": w.identity * F.l1_loss(same_A[0], real_A) if idt else real_A.new_zeros(()),  # λ_idt |G_BA(A) - A|
                "idt_B": w.identity * F.l1_loss(same_B[0], real_B) if idt else real_A.new_zeros(()),
            }  # λ_idt |G_AB(B) - B|
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler.scale(cast(Tensor, sum(t.values()))).backward()
        self.scaler.step(self.opt_G)
        self.freeze_discriminators(False)
        return fake_A.detach(), fake_B.detach(), t

    def discriminator_step(self, real_A: Tensor, real_B: Tensor, fake_A: Tensor, fake_B: Tensor) -> dict[str, Tensor]:
        """Both discriminators: real vs fakes from the history pools, x 0.5, plus the GAN loss's regulariser."""
        pooled_A, pooled_B = self.pool_A.query(fake_A), self.pool_B.query(fake_B)
        t = {}
        with self.runtime.autocast():
            sides = (("A", self.D_A, self.gan_loss_A, real_A, pooled_A), ("B", self.D_B, self.gan_loss_B, real_B, pooled_B))
            for name, D, gan_loss, real, fake in sides:  # ½ L_D(real, pool(fake)), and the loss's regulariser
                t[f"D_{name}"], t[f"D_reg_{name}"] = judge(D, gan_loss, real, fake, self.batch_discriminator_calls)
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler.scale((t["D_A"] + t["D_B"]) + (t["D_reg_A"] + t["D_reg_B"])).backward()
        self.scaler.step(self.opt_D)
        self.scaler.update()
        return t


@hookimpl
def unpaired_register_methods(register):
    register("cyclegan", CycleGAN, CycleGANParams, "CycleGAN: two generators and discriminators, cycle and identity L1 (paper)", default=True)
