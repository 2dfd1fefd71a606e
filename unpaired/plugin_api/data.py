"""Unpaired image data: the interface dataset plugins implement, image decoding and conversion, augmentation.

A dataset plugin returns an :class:`UnpairedData`; it only has to say how many
images each split/domain holds and return each as a PIL image. Pairing (unaligned
random B, or serial), resizing, random crop and flip are done here, with every
random draw taken from the generator it is handed (seeded per (seed, epoch, item) by
the training loader), so that the data a run sees is the same for any number of loader
workers and after a resume.
"""

from __future__ import annotations

import hashlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field, model_validator
from torch import Tensor

from unpaired.errors import Notice, UnpairedError, listed

Split = Literal["train", "test"]
Domain = Literal["A", "B"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
UNREADABLE_IMAGE = (OSError, ValueError, Image.DecompressionBombError)
"""What :func:`load_image` raises for a file it cannot decode (to catch and name the file)."""


class DataError(UnpairedError):
    """The data cannot be used (missing or empty folders, no readable images, ...); the message says where."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB: grayscale, palette and RGBA (alpha dropped) as PIL does,
    16- and 32-bit grayscale by scaling its full range to 0..255 instead of clipping (0..65535, or the image's own
    largest value beyond it); floating-point grayscale (TIFF) the same, except that values within 0..1 are read as
    fractions of white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)  # a masked pixel: black
        largest = float(values.max()) if values.size else 0.0
        scale = 1.0 if image.mode == "F" and largest <= 1 else 65535.0 if image.mode.startswith("I;16") or largest <= 65535 else largest
        image = Image.fromarray(np.clip(values / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str | Path | BinaryIO) -> Image.Image:
    """Decode an image file (or its bytes, in a binary file object) fully and return it as 8-bit RGB; raises one of
    :data:`UNREADABLE_IMAGE` when unreadable."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def list_images(folder: Path) -> list[Path]:
    """Image files (by extension, any case: :data:`IMAGE_EXTENSIONS`) directly in ``folder``, sorted by name. Files of
    another format that PIL reads (``.gif``, ``.ppm``, ...) are left out, and named in one :class:`Notice` so that a
    folder is never read in part without a word."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    other_formats = {extension for extension, kind in Image.registered_extensions().items() if kind in Image.OPEN}
    skipped = [str(p) for p in files if p.suffix.lower() in other_formats.difference(IMAGE_EXTENSIONS)]
    if skipped:
        kinds = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        message = f"skipping {len(skipped)} image(s) of a format not read (only {kinds}): {listed(skipped)}; convert them to PNG"
        warnings.warn(message, Notice, stacklevel=2)
    return [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]


def to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [-1, 1]."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return pixels.float().div_(127.5).sub_(1)


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8 RGB (the inverse of :func:`to_tensor`, rounded)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid(images: Tensor, path: Path, columns: int, padding: int = 2) -> None:
    """Save (N, 3, H, W) images in [-1, 1] as one PNG, ``columns`` per row, black padding between them."""
    n, _, height, width = images.shape
    rows = -(-n // columns)
    canvas = torch.zeros(3, rows * (height + padding) + padding, columns * (width + padding) + padding, dtype=torch.uint8)
    pixels = to_uint8(images)
    for index in range(n):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        canvas[:, top : top + height, left : left + width] = pixels[index]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(path)


MAX_SIDE = 8192
"""The largest image side a dataset or command takes: 8192 px is 200 MB an image as uint8 (800 MB as float32), and a
typo such as 100000 would ask for tens of gigabytes an image, which ends in the process being killed without a word."""


class TransformParams(BaseModel):
    """Pre-processing shared by image datasets (the official CycleGAN defaults)."""

    load_size: int | None = Field(286, ge=1, le=MAX_SIDE, description="training images are first resized to this square size (None: keep)")
    crop_size: int = Field(256, ge=1, le=MAX_SIDE, description="training crop and test resolution")
    crop: bool = Field(True, description="random crop of crop_size for training (false: resize to crop_size)")
    flip: bool = Field(True, description="random horizontal flip for training")
    serial: bool = Field(False, description="pair A[i] with B[i] instead of a random B")

    @model_validator(mode="after")
    def _crop_fits(self) -> TransformParams:
        if self.crop and self.load_size is not None and self.crop_size > self.load_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than load_size {self.load_size}")
        return self


@dataclass(frozen=True)
class Transform:
    """Training augmentation and test pre-processing."""

    load_size: int | None
    crop_size: int
    crop: bool
    flip: bool

    @classmethod
    def from_params(cls, params: TransformParams) -> Transform:
        return cls(params.load_size, params.crop_size, params.crop, params.flip)

    def train(self, image: Image.Image, rng: torch.Generator) -> Tensor:
        """Resize to load_size, random crop (or resize) to crop_size, random flip; then to [-1, 1]."""
        size = self.crop_size
        if self.load_size is not None:
            image = image.resize((self.load_size, self.load_size), Image.Resampling.BICUBIC)
        if self.crop:
            width, height = image.size
            if width < size or height < size:
                raise DataError(f"an image of {width}x{height} px is smaller than crop_size {size}")
            left = int(torch.randint(0, width - size + 1, (1,), generator=rng))
            top = int(torch.randint(0, height - size + 1, (1,), generator=rng))
            image = image.crop((left, top, left + size, top + size))
        else:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        if self.flip and float(torch.rand((), generator=rng)) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(image)

    def test(self, image: Image.Image) -> Tensor:
        """Resize to crop_size x crop_size; then to [-1, 1]."""
        return to_tensor(image.resize((self.crop_size, self.crop_size), Image.Resampling.BICUBIC))


class UnpairedData(ABC):
    """Two unpaired image domains A and B with train and test splits: what dataset factories return.

    Implement ``size`` and ``image``; pairing and augmentation follow ``transform`` and ``serial``.
    Override ``describe`` when the images depend on more than the class and the counts, and
    ``memory_hint`` to say which of the dataset's parameters shrinks the images.
    """

    memory_hint: str = "use smaller images"
    """What to change in this dataset's parameters when training runs out of memory (e.g. ``lower data.crop_size``)."""

    def __init__(self, transform: Transform, serial: bool = False):
        self.transform = transform
        self.serial = serial

    @classmethod
    def input_problems(cls, params: Any) -> list[tuple[str, str]]:
        """What keeps the data that ``params`` name from being read, found cheaply before anything trains (a folder
        that does not exist): ``(field, message)`` pairs that validation reports with every other problem. None by
        default; the dataset's constructor still raises :class:`DataError` for what only reading finds."""
        return []

    @abstractmethod
    def size(self, split: Split, domain: Domain) -> int:
        """Number of images of one split and domain."""

    @abstractmethod
    def image(self, split: Split, domain: Domain, index: int) -> Image.Image:
        """The ``index``-th image of a split and domain, as RGB, before any resizing or augmentation."""

    def describe(self, split: Split, domain: Domain) -> str:
        """What identifies the images of this split and domain besides the dataset's parameters (cached FID
        features are keyed by the component, all its validated parameters and this): override it when the
        images can change while the parameters stay the same, e.g. files on disk (the folder dataset adds
        each file's size and modification time)."""
        return f"{type(self).__qualname__}:{split}{domain}:{self.size(split, domain)}"

    def fingerprint(self, split: Split, domain: Domain) -> str:
        """What tells the images of this split and domain apart from any others, wherever they are stored: the same for
        the same images copied elsewhere, different once one is added, removed or changed. Each run records it (hashed,
        :func:`fingerprints`) for the images it trained on and those it was scored on, so that ``compare`` can say when
        the runs of a study saw different data. By default :meth:`describe`; override it when that names where or when
        the images were written (the folder dataset hashes each file's name and bytes) or leaves out what changes them."""
        return self.describe(split, domain)

    @property
    def train_length(self) -> int:
        """Pairs per epoch: the larger training domain's size, as in the official code."""
        return max(self.size("train", "A"), self.size("train", "B"))

    def train_pair(self, index: int, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        """The augmented ``index``-th A image and a B image (random, or ``index``-th when serial)."""
        size_a, size_b = self.size("train", "A"), self.size("train", "B")
        b = index % size_b if self.serial else int(torch.randint(0, size_b, (1,), generator=rng))
        image_a = self.transform.train(self.image("train", "A", index % size_a), rng)
        return image_a, self.transform.train(self.image("train", "B", b), rng)

    def test_image(self, domain: Domain, index: int) -> Tensor:
        """The ``index``-th test image of ``domain`` at the test resolution, in [-1, 1]."""
        return self.transform.test(self.image("test", domain, index))

    def test_images(self, domain: Domain, limit: int | None = None) -> Iterator[Tensor]:
        """The test images of ``domain`` in order (the first ``limit`` of them when given), at the test resolution."""
        count = self.size("test", domain) if limit is None else min(limit, self.size("test", domain))
        return (self.test_image(domain, index) for index in range(count))


def fingerprints(data: UnpairedData, split: Split) -> dict[str, str]:
    """Each domain's :meth:`UnpairedData.fingerprint` of ``split`` as a :func:`data_hash`: what a run records."""
    return {domain: data_hash(data.fingerprint(split, domain)) for domain in ("A", "B")}


def data_hash(text: str) -> str:
    """The short hash a run records of a set of images described by ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
