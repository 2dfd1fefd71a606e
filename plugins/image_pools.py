"""Image pools: the paper's history buffer of past fakes (Shrivastava et al. 2017) and none."""

from __future__ import annotations

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

    Every decision is made on the device the fakes arrive on, from the pool's own generator there (seeded by the
    engine, saved in :meth:`state_dict`), with the same kernels at every query and no host synchronisation: a step that
    uses the pool can be captured as a CUDA graph, and touches no global RNG.
    """

    capturable = True

    def __init__(self, params: HistoryParams, seed: int):
        self.size = params.size
        self.swap_probability = params.swap_probability
        self.seed = seed
        self.generator: torch.Generator | None = None
        """Made on the device of the first fakes, as are the buffers below."""
        self.images: Tensor | None = None
        """(size, C, H, W): the stored fakes, in slots 0 .. seen - 1 until the pool is full."""
        self.seen: Tensor | None = None
        """How many fakes the pool was given so far (a device scalar)."""
        self.restored: dict[str, Any] | None = None
        """A state loaded before the first fakes arrived, applied when they do."""

    def generators(self) -> list[torch.Generator]:
        return [] if self.generator is None else [self.generator]

    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        if self.images is None or self.seen is None:
            self.images, self.seen = self._start(images)
        draws = torch.rand(len(images), generator=self.generator, device=images.device)
        slots = torch.randint(self.size, (len(images),), generator=self.generator, device=images.device)
        every_slot = torch.arange(self.size, device=images.device).view(-1, 1, 1, 1)
        returned = []
        for image, draw, slot in zip(images, draws, slots):
            filling = self.seen < self.size
            at = torch.where(filling, self.seen, slot)  # the next free slot, or a random one once full
            swap = ~filling & (draw < self.swap_probability)
            returned.append(torch.where(swap, self.images.index_select(0, at.view(1))[0], image))
            torch.where((every_slot == at) & (filling | swap), image, self.images, out=self.images)  # in place: replays see it
            self.seen.add_(1)
        return torch.stack(returned)

    def _start(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The generator, the store and the count on the fakes' device, from the restored state if there is one."""
        state, self.restored = self.restored or self.state_dict(), None
        self.generator = torch.Generator(images.device).manual_seed(self.seed)
        if state["generator"] is not None and state["device"] == images.device.type:
            self.generator.set_state(state["generator"])
        stored = images.new_zeros((self.size, *images.shape[1:]))
        if state["images"] is not None:
            stored[: len(state["images"])] = state["images"]
        return stored, torch.tensor(state["seen"], device=images.device)

    def state_dict(self) -> dict[str, Any]:
        if self.restored is not None or self.images is None or self.seen is None or self.generator is None:
            return self.restored or {"images": None, "seen": 0, "generator": None, "device": None}
        seen = int(self.seen)
        return {
            "images": self.images[: min(seen, self.size)].clone(),
            "seen": seen,
            "generator": self.generator.get_state(),
            "device": self.images.device.type,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; the draws go on from the saved generator when the run resumes on the
        same kind of device (a pool saved by unpaired 0.1, which drew on the host, fills the same but draws afresh)."""
        if "filled" in state:  # unpaired 0.1's pool
            state = {"images": state["images"], "seen": state["filled"], "generator": None, "device": None}
        self.restored = dict(state)
        self.images = None
        self.seen = None
        self.generator = None


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
