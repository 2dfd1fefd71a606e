"""PatchGAN discriminator (pix2pix/CycleGAN) and its globally pooled variant."""

from __future__ import annotations

from pydantic import BaseModel, Field
from torch import Tensor, nn

from unpaired.plugin_api import Norm, hookimpl


class PatchGANParams(BaseModel):
    ndf: int = Field(64, ge=1, description="filters of the first layer")
    n_layers: int = Field(3, ge=1, description="stride-2 layers; 3 gives 70x70 receptive fields")


def patchgan_trunk(params: PatchGANParams, norm: Norm) -> nn.Sequential:
    """C64 (no norm) - C128 - C256 - C512 (stride 1) - 1-channel conv, 4x4 kernels, LeakyReLU 0.2.

    Output: one logit per overlapping patch, shape (N, 1, h, w).
    """
    ndf, bias = params.ndf, not norm.has_affine_shift
    layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
    mult = 1
    for n in range(1, params.n_layers + 1):
        previous, mult = mult, min(2**n, 8)
        stride = 2 if n < params.n_layers else 1
        layers += [
            nn.Conv2d(ndf * previous, ndf * mult, 4, stride=stride, padding=1, bias=bias),
            norm(ndf * mult),
            nn.LeakyReLU(0.2, inplace=True),
        ]
    layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
    return nn.Sequential(*layers)


class PooledDiscriminator(nn.Module):
    """The PatchGAN trunk with its patch logits averaged to one logit per image, shape (N, 1)."""

    def __init__(self, params: PatchGANParams, norm: Norm):
        super().__init__()
        self.trunk = patchgan_trunk(params, norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.trunk(x).mean(dim=(2, 3))


@hookimpl
def unpaired_register_discriminators(register):
    register("patchgan", patchgan_trunk, PatchGANParams, "PatchGAN: one real/fake logit per 70x70 patch (n_layers=3)", default=True)
    register("pooled", PooledDiscriminator, PatchGANParams, "PatchGAN trunk, globally average-pooled to one logit per image")
