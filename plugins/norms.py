"""Normalization layers: instance (the paper's), batch, none."""

from __future__ import annotations

from pydantic import BaseModel, Field
from torch import nn

from unpaired.plugin_api import Norm, hookimpl


class InstanceNormParams(BaseModel):
    affine: bool = Field(False, description="learn a per-channel scale and shift (the paper: no)")


class BatchNormParams(BaseModel):
    momentum: float = Field(0.1, gt=0, le=1, description="running-statistics momentum")


class NoNormParams(BaseModel):
    pass


class InstanceNorm(Norm):
    """InstanceNorm2d without running statistics, as in the official CycleGAN code."""

    per_image = True

    def __init__(self, params: InstanceNormParams):
        self.affine = params.affine
        self.has_affine_shift = params.affine

    def __call__(self, channels: int) -> nn.Module:
        return nn.InstanceNorm2d(channels, affine=self.affine, track_running_stats=False)


class BatchNorm(Norm):
    """BatchNorm2d with a learned scale and shift and running statistics."""

    has_affine_shift = True

    def __init__(self, params: BatchNormParams):
        self.momentum = params.momentum

    def __call__(self, channels: int) -> nn.Module:
        return nn.BatchNorm2d(channels, momentum=self.momentum)


class NoNorm(Norm):
    """No normalization: an identity layer."""

    has_affine_shift = False
    per_image = True

    def __init__(self, params: NoNormParams):
        pass

    def __call__(self, channels: int) -> nn.Module:
        return nn.Identity()


@hookimpl
def unpaired_register_norms(register):
    register("instance", InstanceNorm, InstanceNormParams, "instance norm, no running stats (paper default)", default=True)
    register("batch", BatchNorm, BatchNormParams, "batch norm with learned affine and running stats")
    register("none", NoNorm, NoNormParams, "no normalization (convs keep their bias)")
