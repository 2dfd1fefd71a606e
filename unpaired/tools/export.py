"""Writing any dataset component's images into the CycleGAN folder layout."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from unpaired.errors import InputError
from unpaired.plugin_api.data import UnpairedData
from unpaired.storage.files import check_makeable_folder


def export_folder_layout(data: UnpairedData, out: Path) -> dict[str, int]:
    """Write every image of ``data`` as PNG into out/trainA, trainB, testA, testB; return the counts.

    ``out`` must be new or empty: images already there would mix with these. The four folders are written beside it
    and moved into place together, so an interrupted export leaves no dataset that looks whole."""
    check_makeable_folder(out, "the dataset folder")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} already holds files: export into a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-exporting-", dir=out.parent))
    try:
        counts = {}
        for split in ("train", "test"):
            for domain in ("A", "B"):
                folder = staging / f"{split}{domain}"
                folder.mkdir()
                n = data.size(split, domain)
                for index in range(n):
                    data.image(split, domain, index).save(folder / f"{index:05d}.png")
                counts[f"{split}{domain}"] = n
        if out.is_dir():
            out.rmdir()  # empty (checked above); fails if something appeared there meanwhile
        staging.rename(out)
    except OSError as error:
        raise InputError(f"{out} could not be written ({error}): export into a new or empty folder") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts
