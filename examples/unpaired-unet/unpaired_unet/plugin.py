"""A U-Net generator (pix2pix) and a spectrally normalised PatchGAN, registered with unpaired."""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from unpaired.plugin_api import Norm, hookimpl


class UNetParams(BaseModel):
    depth: int = Field(7, ge=2, description="down/up levels; images need a side divisible by 2**depth (8 for 256 px)")
    ngf: int = Field(64, ge=1, description="filters of the outermost level")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the three innermost decoder levels")


class UNetLevel(nn.Module):
    """One encoder/decoder level around an inner part; all but the outermost concatenate their input."""

    def __init__(self, outer: int, inner: int, norm: Norm, submodule: nn.Module | None, outermost: bool, dropout: float):
        super().__init__()
        bias = not norm.has_affine_shift
        innermost = submodule is None
        down: list[nn.Module] = [] if outermost else [nn.LeakyReLU(0.2, inplace=True)]
        down.append(nn.Conv2d(3 if outermost else outer, inner, 4, stride=2, padding=1, bias=bias))
        if not (outermost or innermost):
            down.append(norm(inner))
        up_in = inner if innermost else inner * 2
        up: list[nn.Module] = [nn.ReLU(inplace=True)]
        if outermost:
            up += [nn.ConvTranspose2d(up_in, 3, 4, stride=2, padding=1), nn.Tanh()]
        else:
            up += [nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=bias), norm(outer)]
            if dropout > 0:
                up.append(nn.Dropout(dropout))
        self.outermost = outermost
        self.model = nn.Sequential(*down, *([submodule] if submodule else []), *up)

    def forward(self, x: Tensor) -> Tensor:
        y = self.model(x)
        return y if self.outermost else torch.cat([x, y], dim=1)


def build_unet(params: UNetParams, norm: Norm) -> nn.Module:
    """The pix2pix U-Net: filters ngf * min(2**level, 8), skip connections at every level."""
    widths = [params.ngf * min(2**level, 8) for level in range(params.depth)]
    inner: nn.Module | None = None
    for level in range(params.depth - 1, 0, -1):
        dropout = params.dropout if params.depth - 1 - level in (1, 2, 3) else 0.0
        inner = UNetLevel(widths[level - 1], widths[level], norm, inner, outermost=False, dropout=dropout)
    return UNetLevel(3, widths[0], norm, inner, outermost=True, dropout=0.0)


class SNPatchGANParams(BaseModel):
    ndf: int = Field(64, ge=1, description="filters of the first layer")
    n_layers: int = Field(3, ge=1, description="stride-2 layers")


def build_sn_patchgan(params: SNPatchGANParams, norm: Norm) -> nn.Module:
    """PatchGAN with spectral normalisation on every convolution instead of a norm layer."""
    ndf = params.ndf
    layers: list[nn.Module] = [spectral_norm(nn.Conv2d(3, ndf, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
    channels = ndf
    for n in range(1, params.n_layers + 1):
        out = ndf * min(2**n, 8)
        stride = 2 if n < params.n_layers else 1
        layers += [spectral_norm(nn.Conv2d(channels, out, 4, stride=stride, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
        channels = out
    layers.append(spectral_norm(nn.Conv2d(channels, 1, 4, stride=1, padding=1)))
    return nn.Sequential(*layers)


@hookimpl
def unpaired_register_generators(register):
    register("unet", build_unet, UNetParams, "U-Net generator with skip connections, as in pix2pix")


@hookimpl
def unpaired_register_discriminators(register):
    register("sn_patchgan", build_sn_patchgan, SNPatchGANParams, "PatchGAN with spectral normalisation, no norm layers")
