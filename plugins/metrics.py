"""FID and KID of translated test images, from feature rows (torchmetrics' implementations)."""

from __future__ import annotations

import warnings

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from unpaired.plugin_api import Metric, Score, hookimpl


class FidParams(BaseModel):
    pass


class KidParams(BaseModel):
    subsets: int = Field(100, ge=1, description="random subsets the MMD is averaged over")
    max_subset_size: int = Field(1000, ge=2, description="largest subset; fitted down to the smaller image set")


class _Precomputed(nn.Module):
    """Lets torchmetrics' metrics take feature rows directly (identity with a known width)."""

    def __init__(self, width: int):
        super().__init__()
        self.num_features = width

    def forward(self, features: Tensor) -> Tensor:
        return features


SMALL_TEST_SPLIT = 2048
"""Fewer test images than this (Inception's feature dimensions) and FID's covariance estimate is rank-deficient."""


class FID(Metric):
    """Fréchet distance between the Gaussians fitted to the real and the translated features, in float64."""

    label = "FID"

    def __init__(self, params: FidParams):
        pass

    def caveat(self, test_images: int) -> str | None:
        if test_images >= SMALL_TEST_SPLIT:
            return None
        return (
            f"Caution: the scores come from {test_images} test images (the smallest direction), fewer than {SMALL_TEST_SPLIT}, "
            "Inception's feature dimensions: FID's covariance estimate is then rank-deficient and FID is biased upward by an "
            "amount that depends on the number of images (Chong and Forsyth, 2020), so its values compare only with runs "
            "scored on the same test images, never with published figures; KID is unbiased and is the cross-check."
        )

    def compute(self, real: Tensor, fake: Tensor) -> Score:
        from torchmetrics.image.fid import FrechetInceptionDistance  # slow to import: only when scoring

        metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
        metric.update(real.double(), real=True)
        metric.update(fake.double(), real=False)
        return Score(float(metric.compute()))


class KID(Metric):
    """Kernel Inception Distance: the mean (and std) over random subsets of the polynomial-kernel MMD, seeded."""

    label = "KID"

    def __init__(self, params: KidParams):
        self.params = params

    def compute(self, real: Tensor, fake: Tensor) -> Score:
        from torchmetrics.image.kid import KernelInceptionDistance

        subset_size = min(self.params.max_subset_size, real.shape[0], fake.shape[0])
        with warnings.catch_warnings():  # it warns that it keeps all features: that is the point here
            warnings.simplefilter("ignore", UserWarning)
            metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=self.params.subsets, subset_size=subset_size)
        metric.update(real, real=True)
        metric.update(fake, real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            mean, std = metric.compute()
        return Score(float(mean), {"std": float(std)})


@hookimpl
def unpaired_register_metrics(register):
    register("fid", FID, FidParams, "Fréchet Inception Distance (Heusel et al. 2017), lower is better", default=True)
    register("kid", KID, KidParams, "Kernel Inception Distance (Bińkowski et al. 2018), lower is better", default=True)
