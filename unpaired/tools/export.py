"""Writing any dataset component's images into the CycleGAN folder layout."""

from __future__ import annotations

from pathlib import Path

from unpaired.plugin_api.data import UnpairedData


def export_folder_layout(data: UnpairedData, out: Path) -> dict[str, int]:
    """Write every image of ``data`` as PNG into out/trainA, trainB, testA, testB; return the counts."""
    counts = {}
    for split in ("train", "test"):
        for domain in ("A", "B"):
            folder = out / f"{split}{domain}"
            folder.mkdir(parents=True, exist_ok=True)
            n = data.size(split, domain)
            for index in range(n):
                data.image(split, domain, index).save(folder / f"{index:05d}.png")
            counts[f"{split}{domain}"] = n
    return counts
