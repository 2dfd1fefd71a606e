"""What the generators make of fixed test images: sample grids after epochs, and the showcase at the end.

The showcase is the final generators' translations of ``SHOWCASE_IMAGES`` test images per direction,
spread evenly over the test split (a pure function of its size, so every run of a study shows the same
images). The study report puts them side by side; saving them when training ends spares the report
from rebuilding every generator.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from unpaired.evaluation.fid import evaluating
from unpaired.plugin_api.data import UnpairedData, save_grid, to_uint8
from unpaired.results.records import NETWORK_OF_DIRECTION, Direction
from unpaired.results.run_folder import RunFolder
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


SHOWCASE_IMAGES = 6
SOURCE_DOMAIN: dict[Direction, str] = {"AtoB": "A", "BtoA": "B"}


def showcase_indices(available: int, count: int = SHOWCASE_IMAGES) -> list[int]:
    """``count`` test images spread evenly over the ``available`` ones, first and last included (all of them
    when there are no more)."""
    if available <= count:
        return list(range(available))
    return [round(i * (available - 1) / (count - 1)) for i in range(count)]


def showcase_inputs(data: UnpairedData, direction: Direction) -> tuple[list[int], Tensor]:
    """The showcase's test images of ``direction``'s source domain: their indices and the images (N, 3, H, W)."""
    source = SOURCE_DOMAIN[direction]
    indices = showcase_indices(data.size("test", source))
    return indices, torch.stack([data.test_image(source, index) for index in indices])


@torch.inference_mode()
def translate(generator: nn.Module, images: Tensor, device: torch.device) -> Tensor:
    """``generator`` (in eval mode for the call) on ``images``, as uint8 RGB on the CPU."""
    with evaluating([generator]):
        return to_uint8(generator(images.to(device)).float().cpu())


def save_showcase(model: CycleGAN, data: UnpairedData, folder: RunFolder) -> None:
    """Translate the showcase images with the final generators, as exported in ``folder``, and save them there."""
    showcase = {}
    for direction, network in NETWORK_OF_DIRECTION.items():
        indices, images = showcase_inputs(data, direction)
        with model.autocast():
            translated = translate(model.networks[network], model.to_device(images), model.device)
        showcase[direction] = {"indices": indices, "images": translated, "generator": folder.generator_stamp(direction)}
    folder.write_showcase(showcase)
