"""Adversarial objectives: least squares (the paper's), vanilla (BCE), hinge, WGAN-GP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from unpaired.plugin_api import GanLoss, hookimpl


class LabelParams(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    real_label: float = Field(1.0, description="target for real images")
    fake_label: float = Field(0.0, description="target for fake images")

    @model_validator(mode="after")
    def _apart(self) -> LabelParams:
        if self.real_label == self.fake_label:
            raise ValueError(f"real_label and fake_label are both {self.real_label:g}: the discriminator would have nothing to tell apart")
        return self


class ProbabilityParams(LabelParams):
    real_label: float = Field(1.0, ge=0, le=1, description="target probability for real images (label smoothing: below 1)")
    fake_label: float = Field(0.0, ge=0, le=1, description="target probability for fake images")


class NoParams(BaseModel):
    pass


class WganGpParams(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    gp_weight: float = Field(10.0, ge=0, description="weight of the gradient penalty (Gulrajani et al.: 10)")


class LeastSquares(GanLoss):
    """LSGAN: mean squared error to the real/fake targets."""

    def __init__(self, params: LabelParams):
        self.real, self.fake = params.real_label, params.fake_label

    def generator_loss(self, fake_pred: Tensor, real_pred: Tensor | None = None) -> Tensor:
        return F.mse_loss(fake_pred, torch.full_like(fake_pred, self.real))

    def discriminator_loss(self, real_pred: Tensor, fake_pred: Tensor) -> Tensor:
        return F.mse_loss(real_pred, torch.full_like(real_pred, self.real)) + F.mse_loss(fake_pred, torch.full_like(fake_pred, self.fake))


class Vanilla(GanLoss):
    """The original GAN objective: binary cross-entropy on logits (non-saturating for G)."""

    def __init__(self, params: ProbabilityParams):
        self.real, self.fake = params.real_label, params.fake_label

    def generator_loss(self, fake_pred: Tensor, real_pred: Tensor | None = None) -> Tensor:
        return F.binary_cross_entropy_with_logits(fake_pred, torch.full_like(fake_pred, self.real))

    def discriminator_loss(self, real_pred: Tensor, fake_pred: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(real_pred, torch.full_like(real_pred, self.real)) + F.binary_cross_entropy_with_logits(
            fake_pred, torch.full_like(fake_pred, self.fake)
        )


class Hinge(GanLoss):
    """Hinge loss: D minimises relu(1 - D(real)) + relu(1 + D(fake)); G minimises -D(fake)."""

    def __init__(self, params: NoParams):
        pass

    def generator_loss(self, fake_pred: Tensor, real_pred: Tensor | None = None) -> Tensor:
        return -fake_pred.mean()

    def discriminator_loss(self, real_pred: Tensor, fake_pred: Tensor) -> Tensor:
        return F.relu(1.0 - real_pred).mean() + F.relu(1.0 + fake_pred).mean()


class WganGp(GanLoss):
    """Wasserstein loss with a gradient penalty on random interpolates of real and fake images."""

    def __init__(self, params: WganGpParams):
        self.gp_weight = params.gp_weight

    def generator_loss(self, fake_pred: Tensor, real_pred: Tensor | None = None) -> Tensor:
        return -fake_pred.mean()

    def discriminator_loss(self, real_pred: Tensor, fake_pred: Tensor) -> Tensor:
        return fake_pred.mean() - real_pred.mean()

    def regularizer(self, discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        """gp_weight * E[(||grad_x D(x)||_2 - 1)^2] at x = a * real + (1 - a) * fake, a ~ U(0, 1) per image."""
        alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
        mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
        scores = discriminator(mixed)
        (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
        norms = grad.flatten(1).norm(2, dim=1)
        return self.gp_weight * ((norms - 1.0) ** 2).mean()


@hookimpl
def unpaired_register_gan_losses(register):
    register("lsgan", LeastSquares, LabelParams, "least-squares GAN (MSE to labels), the paper's choice", default=True)
    register("vanilla", Vanilla, ProbabilityParams, "original GAN: BCE with logits")
    register("hinge", Hinge, NoParams, "hinge loss (SAGAN/BigGAN)")
    register("wgangp", WganGp, WganGpParams, "Wasserstein loss with gradient penalty")
