"""What the generators make of fixed test images: sample grids after epochs, and the showcase at the end.

The showcase is the final generators' translations of ``SHOWCASE_IMAGES`` test images per direction,
spread evenly over the test split (a pure function of its size, so every run of a study shows the same
images). The study report puts them side by side; saving them when training ends spares the report
from rebuilding every generator.
"""

from __future__ import annotations

from pathlib import Path

from typing import Any

import torch
from torch import Tensor, nn

from unpaired.evaluation.features import evaluating
from unpaired.plugin_api.data import UnpairedData, save_grid, to_uint8
from unpaired.plugin_api.methods import SOURCE_DOMAIN, Direction, Method, Runtime
from unpaired.storage.run_folder import RunFolder

REVERSE: dict[Direction, Direction] = {"AtoB": "BtoA", "BtoA": "AtoB"}


@torch.inference_mode()
def save_samples(method: Method, runtime: Runtime, data: UnpairedData, count: int, path: Path) -> None:
    """Grid of the first ``count`` test images of each direction's source domain: real A | G_AB(A) | G_BA(G_AB(A)),
    then the same for B; without the reconstruction when the method translates one way only."""
    if count == 0:
        return
    rows, translators = [], {d: method.networks[method.translator(d)] for d in method.directions}
    for direction, forward in translators.items():
        real = torch.stack(list(data.test_images(SOURCE_DOMAIN[direction], limit=count)))
        with runtime.autocast(), evaluating(method.networks.values()):
            fake = forward(runtime.to_device(real))
            shown = [real, fake.float().cpu()]
            if REVERSE[direction] in translators:
                shown.append(translators[REVERSE[direction]](fake).float().cpu())
        rows += [torch.stack(shown, dim=1).flatten(0, 1)]
    save_grid(torch.cat(rows), path, columns=len(shown))


SHOWCASE_IMAGES = 6


def showcase_indices(available: int, count: int = SHOWCASE_IMAGES) -> list[int]:
    """``count`` test images spread evenly over the ``available`` ones, first and last included (all of them
    when there are no more)."""
    if available <= count:
        return list(range(available))
    return [round(i * (available - 1) / (count - 1)) for i in range(count)]


def showcase_inputs(data: UnpairedData, direction: Direction, indices: list[int] | None = None) -> tuple[list[int], Tensor]:
    """The showcase's test images of ``direction``'s source domain (or those of ``indices``): their indices and the
    images (N, 3, H, W)."""
    source = SOURCE_DOMAIN[direction]
    indices = showcase_indices(data.size("test", source)) if indices is None else indices
    return indices, torch.stack([data.test_image(source, index) for index in indices])


@torch.inference_mode()
def translate(generator: nn.Module, images: Tensor, device: torch.device) -> Tensor:
    """``generator`` (in eval mode for the call) on ``images``, as uint8 RGB on the CPU."""
    with evaluating([generator]):
        return to_uint8(generator(images.to(device)).float().cpu())


def save_showcase(method: Method, runtime: Runtime, data: UnpairedData, folder: RunFolder) -> None:
    """Translate the showcase images with the final generators, as exported in ``folder``, and save them there."""
    showcase: dict[str, dict[str, Any]] = {}
    for direction in method.directions:
        indices, images = showcase_inputs(data, direction)
        with runtime.autocast():
            translated = translate(method.networks[method.translator(direction)], runtime.to_device(images), runtime.device)
        showcase[direction] = {"indices": indices, "images": translated, "generator": folder.generator_stamp(direction)}
    folder.write_showcase(showcase)
