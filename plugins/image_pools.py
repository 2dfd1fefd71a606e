"""Image pools: the paper's history buffer of past fakes (Shrivastava et al. 2017) and none."""

from __future__ import annotations

import random
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import Tensor

from unpaired.plugin_api import ImagePool, hookimpl


class HistoryParams(BaseModel):
    size: int = Field(50, ge=0, description="images kept; 0 disables the pool")
    swap_probability: float = Field(0.5, ge=0, le=1, description="chance that a full pool returns an old image instead")


class NoParams(BaseModel):
    pass


class HistoryPool(ImagePool):
    """Fill up with the first ``size`` fakes (returning them unchanged); afterwards each new fake,
    with probability ``swap_probability``, replaces a random stored one, which is returned instead.

    Images stay on the device they arrive on; the random choices come from the pool's own
    ``random.Random(seed)``, so they cost no device synchronisation and touch no global state.
    """

    def __init__(self, params: HistoryParams, seed: int):
        self.size = params.size
        self.swap_probability = params.swap_probability
        self.rng = random.Random(seed)
        self.images: Tensor | None = None
        self.filled = 0

    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        if self.images is None:
            self.images = images.new_empty((self.size, *images.shape[1:]))
        elif self.images.device != images.device:
            self.images = self.images.to(images.device)
        returned = []
        for image in images:
            if self.filled < self.size:
                self.images[self.filled] = image
                self.filled += 1
                returned.append(image)
            elif self.rng.random() < self.swap_probability:
                index = self.rng.randrange(self.size)
                returned.append(self.images[index].clone())
                self.images[index] = image
            else:
                returned.append(image)
        return torch.stack(returned)

    def state_dict(self) -> dict[str, Any]:
        images = None if self.images is None else self.images[: self.filled].clone()
        return {"images": images, "filled": self.filled, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.filled = state["filled"]
        self.rng.setstate(state["rng"])
        stored = state["images"]
        self.images = None
        if stored is not None:
            self.images = stored.new_empty((self.size, *stored.shape[1:]))
            self.images[: self.filled] = stored


class NoPool(ImagePool):
    """No pool: the discriminator always sees the newest fakes."""

    def __init__(self, params: NoParams, seed: int):
        pass

    def query(self, images: Tensor) -> Tensor:
        return images

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@hookimpl
def unpaired_register_image_pools(register):
    register("history", HistoryPool, HistoryParams, "buffer of past fakes, 50 with 0.5 swap chance (paper default)", default=True)
    register("none", NoPool, NoParams, "no pool: the discriminator sees only the newest fakes")
