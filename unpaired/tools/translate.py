"""Apply a trained generator to images: from an exported generator file, a training checkpoint or a run folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from unpaired.errors import InputError, listed, out_of_memory
from unpaired.plugin_api.data import IMAGE_EXTENSIONS, MAX_SIDE, UNREADABLE_IMAGE, Transform, list_images, load_image, save_grid, to_tensor
from unpaired.plugin_api.registry import Registry
from unpaired.plugin_api.methods import DIRECTIONS
from unpaired.storage.records import Direction, ExportedGenerator
from unpaired.storage.files import check_makeable_folder
from unpaired.storage.run_folder import RunFolder


def load_generator(path: Path, direction: Direction | None, registry: Registry) -> tuple[nn.Module, int, Direction]:
    """Rebuild the generator of ``direction`` (None: the one ``path`` holds), its test resolution and its direction
    from ``path``: ``generators/AtoB.pt``-style exports, any training checkpoint, or a run folder (its final generator)."""
    exported = ExportedGenerator.read(final_generator(path, direction) if path.is_dir() else path, direction)
    return exported.build(registry), exported.crop_size, exported.direction


def final_generator(folder: Path, direction: Direction | None) -> Path:
    """The final generator file of ``direction`` in the run folder ``folder`` (None: its only one)."""
    run = RunFolder(folder)
    saved = [d for d in DIRECTIONS if run.generator_path(d).is_file()]
    if not saved:
        raise InputError(f"{folder} is a folder without final generators (generators/AtoB.pt, BtoA.pt): name a run folder whose run has finished")
    if direction is None and len(saved) > 1:
        raise InputError(f"{folder} is a run folder holding the generators of {' and '.join(saved)}: choose one (--direction)")
    if direction is not None and direction not in saved:
        raise InputError(f"{folder} holds no {direction} generator, only {' and '.join(saved)}")
    return run.generator_path(direction or saved[0])


@torch.inference_mode()
def translate(
    generator: nn.Module, inputs: list[Path], out_dir: Path, size: int, device: torch.device, keep_aspect: bool = False
) -> tuple[list[Path], list[str]]:
    """Translate each input image at ``size`` x ``size`` px (``keep_aspect``: at its own aspect ratio, ``size`` px on
    its shorter side) and save it as PNG under ``out_dir``.

    Returns the paths written and the inputs skipped because they could not be decoded or resized (each with why).
    """
    targets = output_paths(inputs, out_dir)
    transform = Transform(load_size=None, crop_size=size, crop=False, flip=False)
    generator = generator.to(device)
    fitted = _Fitted(generator)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for path, target in zip(inputs, targets):
        try:
            image = load_image(path)
        except UNREADABLE_IMAGE as error:
            skipped.append(f"an unreadable image: {path} ({error})")
            continue
        if not keep_aspect:
            save_grid(generator(transform.test(image).unsqueeze(0).to(device)).float().cpu(), target, columns=1, padding=0)
        elif (resized := aspect_kept(image, size)) is None:
            skipped.append(f"{path}: at {size} px on its shorter side, {image.width}x{image.height} px would be over {MAX_SIDE} px long")
            continue
        else:
            save_grid(fitted(to_tensor(resized).unsqueeze(0).to(device)).float().cpu(), target, columns=1, padding=0)
        written.append(target)
    return written, skipped


def aspect_kept(image: Image.Image, size: int) -> Image.Image | None:
    """``image`` resized to ``size`` px on its shorter side, its aspect ratio kept (None: the longer side would be over
    :data:`MAX_SIDE`)."""
    scale = size / min(image.width, image.height)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    return None if max(width, height) > MAX_SIDE else image.resize((width, height), Image.Resampling.BICUBIC)


class _Fitted:
    """The generator applied to an image of any size: padded (edge pixels repeated) to the multiple of 4, 8, ... 256 px
    whose translation has the padded image's size (a ResNet generator's two down-samplings need 4; a U-Net's more),
    and cropped back. The multiple found for one image is tried first for the next."""

    MULTIPLES = (4, 8, 16, 32, 64, 128, 256)

    def __init__(self, generator: nn.Module):
        self.generator, self.multiple = generator, self.MULTIPLES[0]

    def __call__(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        failed = ""
        for multiple in dict.fromkeys((self.multiple, *self.MULTIPLES)):
            padded = nn.functional.pad(image, (0, -width % multiple, 0, -height % multiple), mode="replicate")
            try:
                translated = self.generator(padded)
            except RuntimeError as error:  # sizes that do not fit the network's layers; running out of memory is no size's fault
                if out_of_memory(error):
                    raise
                failed = f" (at {multiple} px: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
                continue
            if translated.shape[-2:] == padded.shape[-2:]:
                self.multiple = multiple
                return translated[..., :height, :width]
        raise InputError(
            f"the generator translates no {width}x{height} px image padded to a multiple of up to {self.MULTIPLES[-1]} px "
            f"into one of its size{failed}: translate without --keep-aspect"
        )


def output_paths(inputs: list[Path], out_dir: Path) -> list[Path]:
    """Where each input's translation goes: ``OUT_DIR/STEM.png``. Refused before anything is written when ``out_dir`` is
    a file, when a translation would replace an input (``--out`` the input folder), or when two inputs share a stem."""
    check_makeable_folder(out_dir, "--out")
    targets = [out_dir / f"{path.stem}.png" for path in inputs]
    replaced = sorted(str(path) for path in {path.resolve() for path in inputs} & {target.resolve() for target in targets})
    if replaced:
        raise InputError(f"the translations would replace {len(replaced)} input image(s) ({listed(replaced)}): choose another --out folder")
    shared = [str(target) for target, count in Counter(targets).items() if count > 1]
    if shared:
        raise InputError(f"several inputs would be translated to {listed(shared)} (one stem, other extensions): rename them apart")
    return targets


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
