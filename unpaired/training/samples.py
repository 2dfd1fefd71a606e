"""Sample grids: what the generators make of a few fixed test images, saved after epochs."""

from __future__ import annotations

from pathlib import Path

import torch

from unpaired.evaluation.fid import evaluating
from unpaired.plugin_api.data import UnpairedData, save_grid
from unpaired.training.cyclegan import CycleGAN


@torch.inference_mode()
def save_samples(model: CycleGAN, data: UnpairedData, count: int, path: Path) -> None:
    """Grid of the first ``count`` test images per domain: real A | G_AB(A) | G_BA(G_AB(A)), then the same for B."""
    if count == 0:
        return
    rows = []
    for domain, forward, backward in (("A", model.G_AB, model.G_BA), ("B", model.G_BA, model.G_AB)):
        real = torch.stack(list(data.test_images(domain, limit=count)))
        with model.autocast(), evaluating(model.networks.values()):
            fake = forward(model.to_device(real))
            cycled = backward(fake)
        rows += [torch.stack([real, fake.float().cpu(), cycled.float().cpu()], dim=1).flatten(0, 1)]
    save_grid(torch.cat(rows), path, columns=3)
