"""CUT and FastCUT (Park et al. 2020): one generator A -> B, one discriminator, and PatchNCE on the generator's encoder.

Loss terms, each weighted as in the total the optimiser sees: ``G_adv`` (λ_GAN L_GAN(G, D)), ``NCE`` (λ_NCE PatchNCE of
A and G(A), averaged over the layers, halved when ``nce_idt`` adds ``NCE_idt``, the same for B and G(B)), ``D`` (½
L_D(real B, G(A))) and ``D_reg`` (the GAN loss's regulariser, 0 when it has none). No image pool. The update order is the
paper code's: the discriminator first, then the generator with F.
"""

from __future__ import annotations

import itertools
from typing import cast
from collections.abc import Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from unpaired.plugin_api import (
    Choice,
    Direction,
    FeatureEncoder,
    Method,
    MethodParts,
    TrainingProgress,
    describe,
    feature_layers,
    fool,
    forward_each,
    hookimpl,
    judge,
)
from .patchnce import PatchSampler, feature_channels, layer_problems, layers_nce_loss

PAPER_LAYERS = ("input", "down1", "down2", "block1", "block5")
"""The paper's PatchNCE layers 0, 4, 8, 12, 16 of its 9-block ResNet, by the names of :mod:`unpaired_plugins.resnet`."""
LAYERS_NOTE = (
    "encoder layers of the generator PatchNCE compares (default: the paper's input, down1, down2, block1, block5, "
    "ending at the generator's last block when it has fewer than 5)"
)


class CUTParams(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    nce_layers: list[str] | None = Field(None, min_length=1, description=LAYERS_NOTE)
    num_patches: int = Field(256, ge=1, description="patches sampled per layer and image")
    nce_T: float = Field(0.07, gt=0, description="temperature of the PatchNCE logits")
    netF_nc: int = Field(256, ge=1, description="channels of F's MLPs (2 layers)")
    lambda_GAN: float = Field(1.0, ge=0, description="weight of the adversarial loss")
    lambda_NCE: float = Field(1.0, gt=0, description="weight of the PatchNCE loss")
    nce_idt: bool = Field(True, description="also PatchNCE between B and G(B) (identity), averaged with A's")
    flip_equivariance: bool = Field(False, description="flip the inputs at random, and the features back (FastCUT)")


def paper_layers(available: Sequence[str]) -> list[str]:
    """:data:`PAPER_LAYERS` as far as a generator with encoder layers ``available`` has them: its 5th residual block, or
    its last when it has fewer; every layer it has when it has none of the paper's."""
    blocks = [name for name in available if name.startswith("block")]
    deepest = [blocks[min(4, len(blocks) - 1)]] if blocks else []
    layers = list(dict.fromkeys([name for name in PAPER_LAYERS[:-1] if name in available] + deepest))
    return layers or list(available)


class FastCUTParams(CUTParams):
    lambda_NCE: float = Field(10.0, gt=0, description="weight of the PatchNCE loss")
    nce_idt: bool = Field(False, description="also PatchNCE between B and G(B) (identity), averaged with A's")
    flip_equivariance: bool = Field(True, description="flip the inputs at random, and the features back")


class CUT(Method):
    directions = ("AtoB",)
    uses = ("generator", "discriminator", "gan_loss")  # no image pool, no loss-weight schedule
    loss_groups = {"adversarial, generator": ("G_adv",), "PatchNCE": ("NCE", "NCE_idt"), "discriminator": ("D",)}
    discriminators = ("D",)

    @classmethod
    def fit_params(cls, params: CUTParams, components: Mapping[str, Choice]) -> tuple[CUTParams, list[str]]:
        """``nce_layers`` left out: the paper's layers, the deepest one clipped to the generator's last block."""
        generator = components.get("generator")
        if generator is None or params.nce_layers is not None or (available := feature_layers(generator)) is None:
            return params, []  # set in the spec, or no generator with features (a problem reported as such)
        layers = paper_layers(available)
        fitted = params.model_copy(update={"nce_layers": layers})
        return fitted, [f"method.nce_layers: {', '.join(layers)} (the paper's layers that {describe(generator, 'generator')} has)"]

    @classmethod
    def variant_problems(cls, params: CUTParams, components: Mapping[str, Choice]) -> list[tuple[str, str]]:
        """A generator without encoder features, or without one of ``nce_layers``, cannot train with PatchNCE."""
        return layer_problems(components.get("generator"), params.nce_layers or PAPER_LAYERS)

    def __init__(self, params: CUTParams, parts: MethodParts):
        self.p = params
        self.runtime = parts.runtime
        self.batch_G = parts.generators_per_image
        self.batch_D = parts.discriminators_per_image
        self.loss_terms = ("G_adv", "NCE", *(["NCE_idt"] if params.nce_idt else []), "D", "D_reg")
        generator, discriminator = parts.generator(), parts.discriminator()
        self.G, self.D = parts.runtime.place(generator), parts.runtime.place(discriminator)
        self.encoder = cast(FeatureEncoder, self.G)
        self.layers = list(params.nce_layers or PAPER_LAYERS)  # filled in by fit_params when the spec leaves it out
        channels = feature_channels(cast(FeatureEncoder, generator), self.layers, parts.image_size, parts.runtime.device)
        sampler = parts.initialise(PatchSampler(channels, params.netF_nc))
        self.networks = {"G": generator, "D": discriminator, "F": sampler}
        self.F = parts.runtime.place(sampler)
        self.gan_loss = parts.gan_loss()
        self.opt_G = parts.runtime.adam(itertools.chain(generator.parameters(), sampler.parameters()), parts.lr, parts.betas)
        self.opt_D = parts.runtime.adam(discriminator.parameters(), parts.lr, parts.betas)
        self.scaler = parts.runtime.grad_scaler()

    def translator(self, direction: Direction) -> str:
        return "G"

    def optimizers(self) -> list:
        return [self.opt_G, self.opt_D]

    def stateful(self) -> dict:
        return {"opt_G": self.opt_G, "opt_D": self.opt_D, "scaler": self.scaler, "gan_loss": self.gan_loss}

    def capture_problem(self) -> str | None:
        return None  # its random choices (flips, patches) are drawn on the device, from its default generator

    def nce(self, source: Tensor, translated: Tensor, flipped: Tensor | None) -> Tensor:
        """λ_NCE PatchNCE between ``source`` and its translation, averaged over the layers; a translation of a flipped
        input (``flipped``, a device bool) has its features flipped back to line up with the source's."""
        queries = [flip_if(flipped, q) for q in self.encoder.encode(translated, self.layers)]
        with torch.no_grad():  # keys get no gradient
            keys = self.encoder.encode(source, self.layers)
            places = PatchSampler.places(keys, self.p.num_patches)
            keys = self.F(keys, places)
        return self.p.lambda_NCE * layers_nce_loss(self.F(queries, places), keys, self.p.nce_T)

    def train_step(self, real_A: Tensor, real_B: Tensor, progress: TrainingProgress) -> dict[str, Tensor]:
        p, t = self.p, {}
        flipped = torch.rand((), device=real_A.device) < 0.5 if p.flip_equivariance else None  # decided on the device
        inputs = [real_A, real_B] if p.nce_idt else [real_A]
        with self.runtime.autocast():
            fake_B, *same_B = forward_each(self.G, *(flip_if(flipped, x) for x in inputs), batched=self.batch_G)

        self.D.requires_grad_(True)  # the discriminator: real B against G(A)
        with self.runtime.autocast():
            t["D"], t["D_reg"] = judge(self.D, self.gan_loss, real_B, fake_B.detach(), self.batch_D)
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler.scale(t["D"] + t["D_reg"]).backward()
        self.scaler.step(self.opt_D)

        self.D.requires_grad_(False)  # the generator and F: fool D, keep the content of each patch
        with self.runtime.autocast():
            t["G_adv"] = p.lambda_GAN * fool(self.D, self.gan_loss, fake_B, real_B, self.batch_D)
            t["NCE"] = self.nce(real_A, fake_B, flipped)
            if p.nce_idt:
                t["NCE"], t["NCE_idt"] = 0.5 * t["NCE"], 0.5 * self.nce(real_B, same_B[0], flipped)
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler.scale(t["G_adv"] + t["NCE"] + t.get("NCE_idt", 0)).backward()
        self.scaler.step(self.opt_G)
        self.scaler.update()
        return t


def flip_if(flipped: Tensor | None, images: Tensor) -> Tensor:
    """``images`` mirrored left to right where the device bool ``flipped`` is true (None: never)."""
    return images if flipped is None else torch.where(flipped, images.flip(3), images)


@hookimpl
def unpaired_register_methods(register):
    register("cut", CUT, CUTParams, "CUT: one generator A -> B, PatchNCE on its encoder, identity NCE (Park et al. 2020)")
    register("fastcut", CUT, FastCUTParams, "FastCUT: CUT with lambda_NCE 10, no identity NCE, flip-equivariance (Park et al. 2020)")
