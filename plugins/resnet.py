"""The CycleGAN ResNet generator (Johnson et al. 2016, as in the official CycleGAN code)."""

from __future__ import annotations

from collections.abc import Sequence
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


class ResnetGenerator(nn.Sequential):
    """c7s1-ngf, d(2 ngf), d(4 ngf), n_blocks x R(4 ngf), u(2 ngf), u(ngf), c7s1-3, tanh.

    Convolutions followed by a norm have a bias only when the norm has no learned shift. Its encoder's features
    (``unpaired.plugin_api.FeatureEncoder``): ``input`` (the image as padded for the first convolution; itself with
    zeros padding), ``down1`` and ``down2`` (each downsampling convolution), ``block1`` ... (each residual block).
    CUT's layers 0, 4, 8, 12, 16 of its ResNet are ``input``, ``down1``, ``down2``, ``block1`` and ``block5``.
    """

    def __init__(self, params: ResnetParams, norm: Norm):
        ngf, pad = params.ngf, params.padding
        bias = not norm.has_affine_shift
        first = padded_conv(3, ngf, 7, pad, bias)
        features = {"input": 0 if len(first) == 2 else -1}  # layer name -> index of the module giving it (-1: the input)
        layers: list[nn.Module] = [*first, norm(ngf), nn.ReLU(inplace=True)]
        channels = ngf
        for k in (1, 2):
            features[f"down{k}"] = len(layers)
            layers += [nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1, bias=bias), norm(channels * 2), nn.ReLU(inplace=True)]
            channels *= 2
        for k in range(params.n_blocks):
            features[f"block{k + 1}"] = len(layers)
            layers.append(ResidualBlock(channels, norm, params.dropout, pad))
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                norm(channels // 2),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers += [*padded_conv(channels, 3, 7, pad), nn.Tanh()]
        super().__init__(*layers)
        self.feature_index = features

    def __getitem__(self, index: int | slice) -> nn.Module:  # type: ignore[override]
        """A layer, or a plain ``nn.Sequential`` of a slice of them (this class is built from parameters, not layers)."""
        return nn.Sequential(*list(self)[index]) if isinstance(index, slice) else super().__getitem__(index)

    @staticmethod
    def feature_layers(params: ResnetParams) -> tuple[str, ...]:
        """The layers :meth:`encode` gives, in the order they are computed."""
        return ("input", "down1", "down2", *(f"block{k + 1}" for k in range(params.n_blocks)))

    def encode(self, images: Tensor, layers: Sequence[str]) -> list[Tensor]:
        """The output of each of ``layers`` for ``images``, in that order; the rest of the network is not run."""
        wanted = [self.feature_index[name] for name in layers]
        outputs, x = {-1: images}, images
        for index, layer in enumerate(self):
            if index > max(wanted):
                break
            x = outputs[index] = layer(x)
        return [outputs[index] for index in wanted]


@hookimpl
def unpaired_register_generators(register):
    register(
        "resnet", ResnetGenerator, ResnetParams, "ResNet generator of the CycleGAN paper (2 downsamplings, n_blocks residual blocks)", default=True
    )
