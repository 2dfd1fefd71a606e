"""Apply a trained generator to images: from an exported generator file or a training checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unpaired.errors import InputError
from unpaired.plugin_api.data import IMAGE_EXTENSIONS, UNREADABLE_IMAGE, Transform, list_images, load_image, save_grid
from unpaired.plugin_api.registry import Registry
from unpaired.storage.records import Direction, ExportedGenerator


def load_generator(path: Path, direction: Direction | None, registry: Registry) -> tuple[nn.Module, int, Direction]:
    """Rebuild the generator of ``direction`` (None: the one ``path`` holds), its test resolution and its direction
    from ``path``: ``generators/AtoB.pt``-style exports or any training checkpoint."""
    exported = ExportedGenerator.read(path, direction)
    return exported.build(registry), exported.crop_size, exported.direction


@torch.inference_mode()
def translate(generator: nn.Module, inputs: list[Path], out_dir: Path, size: int, device: torch.device) -> tuple[list[Path], list[str]]:
    """Translate each input image at ``size`` x ``size`` px and save it as PNG under ``out_dir``.

    Returns the paths written and the inputs skipped because they could not be decoded (each with why).
    """
    transform = Transform(load_size=None, crop_size=size, crop=False, flip=False)
    generator = generator.to(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for path in inputs:
        try:
            image = transform.test(load_image(path)).unsqueeze(0).to(device)
        except UNREADABLE_IMAGE as error:
            skipped.append(f"{path} ({error})")
            continue
        target = out_dir / f"{path.stem}.png"
        save_grid(generator(image).float().cpu(), target, columns=1, padding=0)
        written.append(target)
    return written, skipped


def collect_inputs(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else the images directly inside the folder."""
    if path.is_dir():
        found = list_images(path)
        if not found:
            raise InputError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return found
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    return [path]
