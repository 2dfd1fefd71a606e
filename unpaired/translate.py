"""Apply a trained generator to images: from an exported generator file or a training checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from unpaired.checkpoint import load_checkpoint
from unpaired.data import IMAGE_EXTENSIONS, Transform, list_images, load_image, save_grid
from unpaired.registry import Registry

Direction = Literal["AtoB", "BtoA"]


def load_generator(path: Path, direction: Direction, registry: Registry) -> tuple[nn.Module, int]:
    """Rebuild the generator of ``direction`` and its test resolution from ``path``:
    ``generators/AtoB.pt``-style exports or any training checkpoint."""
    state = load_checkpoint(path)
    if "networks" in state.get("model", {}):
        config, norm, crop = state["spec"]["generator"], state["spec"]["generator_norm"], state["crop_size"]
        weights = state["model"]["networks"]["G_AB" if direction == "AtoB" else "G_BA"]
    elif "state_dict" in state:
        if state["direction"] != direction:
            raise ValueError(f"{path} holds the {state['direction']} generator, not {direction}; use generators/{direction}.pt")
        config, norm, weights, crop = state["generator"], state["norm"], state["state_dict"], state["crop_size"]
    else:
        raise ValueError(f"{path} is neither an unpaired checkpoint nor an exported generator")
    generator = registry.build("generator", config, registry.build("norm", norm))
    generator.load_state_dict(weights)
    return generator.eval(), int(crop)


@torch.inference_mode()
def translate(generator: nn.Module, inputs: list[Path], out_dir: Path, size: int, device: torch.device) -> list[Path]:
    """Translate each input image at ``size`` x ``size`` px and save it as PNG under ``out_dir``; return the paths."""
    transform = Transform(load_size=None, crop_size=size, crop=False, flip=False)
    generator = generator.to(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in inputs:
        image = transform.test(load_image(path)).unsqueeze(0).to(device)
        target = out_dir / f"{path.stem}.png"
        save_grid(generator(image).float().cpu(), target, columns=1, padding=0)
        written.append(target)
    return written


def collect_inputs(path: Path) -> list[Path]:
    """``path`` itself if it is a file, else the images directly inside the folder."""
    if path.is_dir():
        found = list_images(path)
        if not found:
            raise ValueError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return found
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    return [path]
