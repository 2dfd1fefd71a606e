"""Two procedurally generated domains (smooth colour blobs vs striped textures), for offline runs and tests."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field

from unpaired.plugin_api import MAX_SIDE, Domain, Split, Transform, UnpairedData, hookimpl


class SyntheticParams(BaseModel):
    size: int = Field(64, ge=8, le=MAX_SIDE, description="side of the square images")
    n_train: int = Field(200, ge=1, description="training images per domain")
    n_test: int = Field(50, ge=1, description="test images per domain")
    seed: int = Field(0, ge=0, description="the images are a pure function of this seed")
    flip: bool = Field(True, description="random horizontal flip for training")


def render(domain: Domain, size: int, generator: torch.Generator) -> torch.Tensor:
    """A (3, size, size) image in [0, 1]: domain A is 2-4 soft Gaussian colour blobs on a dark background,
    domain B a sinusoidal two-colour stripe pattern of random angle, frequency and phase."""
    coords = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    if domain == "A":
        image = torch.full((3, size, size), 0.1)
        for _ in range(2 + int(rand(()) * 3)):
            cx = rand(()) * 1.6 - 0.8
            cy = rand(()) * 1.6 - 0.8
            radius = 0.15 + rand(()) * 0.35
            weight = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
            image += rand(3, 1, 1) * weight
        return image.clamp(0, 1)
    angle = rand(()) * math.pi
    frequency = 2 + rand(()) * 6
    phase = rand(()) * 2 * math.pi
    wave = 0.5 + 0.5 * torch.sin(frequency * math.pi * (x * torch.cos(angle) + y * torch.sin(angle)) + phase)
    low, high = rand(3, 1, 1), rand(3, 1, 1)
    return low + (high - low) * wave


class SyntheticData(UnpairedData):
    """``n_train``/``n_test`` images per domain, each rendered on demand from (seed, split, domain, index)."""

    memory_hint = "lower data.size"

    def __init__(self, params: SyntheticParams):
        super().__init__(Transform(load_size=None, crop_size=params.size, crop=False, flip=params.flip))
        self.params = params

    def size(self, split: Split, domain: Domain) -> int:
        return self.params.n_train if split == "train" else self.params.n_test

    def image(self, split: Split, domain: Domain, index: int) -> Image.Image:
        key = (self.params.seed * 4 + ("train", "test").index(split) * 2 + "AB".index(domain)) * 1_000_003 + index
        pixels = render(domain, self.params.size, torch.Generator().manual_seed(key))
        return Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), mode="RGB")

    def describe(self, split: Split, domain: Domain) -> str:
        return f"synthetic:{split}{domain}:{self.params.model_dump_json()}"

    def fingerprint(self, split: Split, domain: Domain) -> str:
        """The images of a split depend only on the seed, the size and how many there are (not on the other split's count)."""
        return f"synthetic:{split}{domain}:seed={self.params.seed}:size={self.params.size}:images={self.size(split, domain)}"


@hookimpl
def unpaired_register_datasets(register):
    register("synthetic", SyntheticData, SyntheticParams, "generated blobs (A) vs stripes (B); no download needed")
