"""The official CycleGAN folder layout: ROOT/trainA, trainB, testA, testB."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

from PIL import Image
from pydantic import Field

from unpaired.plugin_api import (
    IMAGE_EXTENSIONS,
    UNREADABLE_IMAGE,
    DataError,
    Domain,
    Notice,
    Split,
    Transform,
    TransformParams,
    UnpairedData,
    hookimpl,
    list_images,
    listed,
    load_image,
)


class FolderParams(TransformParams):
    root: Path = Field(description="folder holding trainA, trainB, testA and testB")
    cache: bool = Field(False, description="keep every decoded image in memory (fast epochs for small sets such as horse2zebra)")


class ImageFolders(UnpairedData):
    """Images found in the four folders. Every file is read and decoded once up front: unreadable ones are
    reported in one warning naming them and skipped; a missing or empty folder is an error. The
    bytes read are hashed then (:meth:`fingerprint`). With ``cache`` the decoded images are kept
    (loader workers share them copy-on-write)."""

    memory_hint = "lower data.crop_size"

    def __init__(self, params: FolderParams):
        super().__init__(Transform.from_params(params), params.serial)
        self.root = params.root
        self.files: dict[tuple[str, str], list[Path]] = {}
        self.decoded: dict[tuple[str, str], list[Image.Image]] = {}
        self.digests: dict[tuple[str, str], list[str]] = {}
        unreadable: list[str] = []
        sizes: list[tuple[Path, tuple[int, int]]] = []  # of the training images
        for split in ("train", "test"):
            for domain in ("A", "B"):
                folder = self.root / f"{split}{domain}"
                if not folder.is_dir():
                    raise DataError(f"{folder} does not exist: a folder dataset needs trainA, trainB, testA and testB in {self.root}")
                readable, decoded, digests = [], [], []
                for path in list_images(folder):
                    try:
                        content = path.read_bytes()
                        image = load_image(io.BytesIO(content))
                    except UNREADABLE_IMAGE as error:
                        unreadable.append(f"{path} ({error})")
                        continue
                    readable.append(path)
                    digests.append(hashlib.sha256(content).hexdigest())
                    decoded += [image] if params.cache else []
                    sizes += [(path, image.size)] if split == "train" else []
                if not readable:
                    raise DataError(f"{folder} holds no readable images ({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
                self.files[split, domain] = readable
                self.digests[split, domain] = digests
                if params.cache:
                    self.decoded[split, domain] = decoded
        self._check_the_crop_fits(sizes)
        if unreadable:
            warnings.warn(f"skipping {len(unreadable)} unreadable image(s): {listed(unreadable, '; ')}", Notice, stacklevel=2)

    def _check_the_crop_fits(self, sizes: list[tuple[Path, tuple[int, int]]]) -> None:
        """Raise :class:`DataError` naming the training images (of these ``sizes``) smaller than ``crop_size`` when
        training crops them without resizing them first (``load_size`` null): each would stop the run when drawn."""
        if not self.transform.crop or self.transform.load_size is not None:
            return
        crop = self.transform.crop_size
        small = [(f"{path} ({width}x{height})", min(width, height)) for path, (width, height) in sizes if min(width, height) < crop]
        if small:
            raise DataError(
                f"{len(small)} training image(s) are smaller than crop_size {crop} px, and with load_size null they are "
                f"cropped as they are: {listed([what for what, _ in small], '; ')}; set data.load_size to resize them first "
                f"(the paper's is 286), or a crop_size of at most {min(side for _, side in small)}"
            )

    @classmethod
    def input_problems(cls, params: FolderParams) -> list[tuple[str, str]]:
        missing = [name for name in ("trainA", "trainB", "testA", "testB") if not (params.root / name).is_dir()]
        if not missing:
            return []
        where = f"{params.root}" + ("" if params.root.is_absolute() else f" (that is {params.root.resolve()}: relative to {Path.cwd()})")
        found = "does not exist" if not params.root.is_dir() else f"has no {', '.join(missing)}"
        return [("root", f"{where} {found}; a folder dataset needs trainA, trainB, testA and testB in it")]

    def size(self, split: Split, domain: Domain) -> int:
        return len(self.files[split, domain])

    def image(self, split: Split, domain: Domain, index: int) -> Image.Image:
        if self.decoded:
            return self.decoded[split, domain][index]
        return load_image(self.files[split, domain][index])

    def describe(self, split: Split, domain: Domain) -> str:
        stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files[split, domain]]
        return f"folder:{split}{domain}:{stats}"

    def fingerprint(self, split: Split, domain: Domain) -> str:
        """Each readable file's name and the SHA-256 of its bytes as they were read when the dataset was opened, in
        order: the same images under another root or copied with new modification times give the same."""
        files = [(path.name, digest) for path, digest in zip(self.files[split, domain], self.digests[split, domain])]
        return f"folder:{split}{domain}:{files}"


@hookimpl
def unpaired_register_datasets(register):
    register("folder", ImageFolders, FolderParams, "CycleGAN layout: ROOT/trainA, trainB, testA, testB")
