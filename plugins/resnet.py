"""The CycleGAN ResNet generator (Johnson et al. 2016, as in the official CycleGAN code)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from torch import Tensor, nn

from unpaired.plugin_api import Norm, hookimpl


Padding = Literal["reflect", "replicate", "zeros"]


class ResnetParams(BaseModel):
    n_blocks: int = Field(9, ge=1, description="residual blocks at the bottleneck (paper: 9 at 256 px, 6 at 128 px)")
    ngf: int = Field(64, ge=1, description="filters of the first layer")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout inside each residual block (0: off, the paper's)")
    padding: Padding = Field("reflect", description="padding of the 3x3 and 7x7 convolutions")


_PADS = {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d}


def padded_conv(in_channels: int, out_channels: int, kernel: int, padding: Padding, bias: bool = True) -> list[nn.Module]:
    """A stride-1 convolution that keeps the size, padding with ``padding``. Reflect/replicate use a
    separate pad layer, as the official code does: measurably faster on CPU than Conv2d's padding_mode."""
    if padding == "zeros":
        return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=bias)]
    return [_PADS[padding](kernel // 2), nn.Conv2d(in_channels, out_channels, kernel, bias=bias)]


class ResidualBlock(nn.Module):
    """x + (conv3-norm-relu-[dropout]-conv3-norm)(x)."""

    def __init__(self, channels: int, norm: Norm, dropout: float, padding: Padding):
        super().__init__()
        bias = not norm.has_affine_shift
        layers: list[nn.Module] = [*padded_conv(channels, channels, 3, padding, bias), norm(channels), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [*padded_conv(channels, channels, 3, padding, bias), norm(channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def build_resnet(params: ResnetParams, norm: Norm) -> nn.Sequential:
    """c7s1-ngf, d(2 ngf), d(4 ngf), n_blocks x R(4 ngf), u(2 ngf), u(ngf), c7s1-3, tanh.

    Convolutions followed by a norm have a bias only when the norm has no learned shift.
    """
    ngf, pad = params.ngf, params.padding
    bias = not norm.has_affine_shift
    layers: list[nn.Module] = [*padded_conv(3, ngf, 7, pad, bias), norm(ngf), nn.ReLU(inplace=True)]
    channels = ngf
    for _ in range(2):
        layers += [nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1, bias=bias), norm(channels * 2), nn.ReLU(inplace=True)]
        channels *= 2
    layers += [ResidualBlock(channels, norm, params.dropout, pad) for _ in range(params.n_blocks)]
    for _ in range(2):
        layers += [
            nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
            norm(channels // 2),
            nn.ReLU(inplace=True),
        ]
        channels //= 2
    layers += [*padded_conv(channels, 3, 7, pad), nn.Tanh()]
    return nn.Sequential(*layers)


@hookimpl
def unpaired_register_generators(register):
    register("resnet", build_resnet, ResnetParams, "ResNet generator of the CycleGAN paper (2 downsamplings, n_blocks residual blocks)", default=True)
