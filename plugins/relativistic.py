"""Relativistic average least squares (RaLSGAN, Jolicoeur-Martineau 2018): fakes are judged against the average real."""

from __future__ import annotations

from pydantic import BaseModel
from torch import Tensor

from unpaired.plugin_api import GanLoss, hookimpl


class NoParams(BaseModel):
    pass


class RelativisticAverageLS(GanLoss):
    """D wants real scores one above the average fake score and fake scores one below the average real one;
    G wants the opposite. Both terms of each loss are means over the batch (and patches)."""

    compares_with_real = True

    def __init__(self, params: NoParams):
        pass

    def generator_loss(self, fake_pred: Tensor, real_pred: Tensor | None = None) -> Tensor:
        if real_pred is None:
            raise ValueError("the relativistic generator loss needs the discriminator's scores on real images (compares_with_real)")
        return ((fake_pred - real_pred.mean() - 1) ** 2).mean() + ((real_pred - fake_pred.mean() + 1) ** 2).mean()

    def discriminator_loss(self, real_pred: Tensor, fake_pred: Tensor) -> Tensor:
        return ((real_pred - fake_pred.mean() - 1) ** 2).mean() + ((fake_pred - real_pred.mean() + 1) ** 2).mean()


@hookimpl
def unpaired_register_gan_losses(register):
    register("ralsgan", RelativisticAverageLS, NoParams, "relativistic average least squares (RaLSGAN)")
