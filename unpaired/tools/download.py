"""Download the public CycleGAN datasets into the folder layout: streamed, resumable, verified."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from unpaired.errors import UnpairedError

DEFAULT_URL = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets"
URL_ENV = "UNPAIRED_DATASETS_URL"
DATASETS = (
    "apple2orange",
    "summer2winter_yosemite",
    "horse2zebra",
    "monet2photo",
    "cezanne2photo",
    "ukiyoe2photo",
    "vangogh2photo",
    "maps",
    "facades",
    "iphone2dslr_flower",
    "ae_photos",
)
LAYOUT = ("trainA", "trainB", "testA", "testB")


class DownloadError(UnpairedError):
    """The dataset could not be fetched or is damaged; the message says what to do."""


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds the four non-empty domain folders."""
    return all((folder / part).is_dir() and any((folder / part).iterdir()) for part in LAYOUT)


def _fetch(url: str, part: Path, show_progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (resuming with an HTTP Range request), with a progress bar."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to send: the file is complete
            return
        raise DownloadError(f"{url} answered HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(
            f"cannot reach {url} ({reason}). If this machine is offline, download the zip on a connected "
            f"machine and unzip it here, or point data.root at an existing copy."
        ) from None
    with response:
        if have and response.status != 206:  # the server ignored the range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, "ab" if have else "wb") as file,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, disable=not show_progress, desc=part.name) as bar,
        ):
            while chunk := response.read(1 << 20):
                file.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"the download of {url} stopped at {part.stat().st_size} of {total} bytes; run the command again to resume")


def _extract(archive: Path, name: str, destination: Path) -> None:
    """Check every member's CRC and the folder layout, then extract ``name/`` into ``destination``."""
    try:
        with zipfile.ZipFile(archive) as zip_file:
            damaged = zip_file.testzip()
            if damaged is not None:
                raise DownloadError(f"{archive} is damaged ({damaged} fails its CRC check); delete it and download again")
            members = zip_file.namelist()
            for part in LAYOUT:
                if not any(m.startswith(f"{name}/{part}/") and not m.endswith("/") for m in members):
                    raise DownloadError(f"{archive} has no images under {name}/{part}/: not a CycleGAN dataset zip")
            staging = destination / f".{name}.extracting"
            shutil.rmtree(staging, ignore_errors=True)
            for member in members:
                target = (staging / member).resolve()
                if not target.is_relative_to(staging.resolve()):
                    raise DownloadError(f"{archive} contains an unsafe path {member!r}")
            zip_file.extractall(staging)
    except zipfile.BadZipFile as error:
        raise DownloadError(f"{archive} is not a valid zip ({error}); delete it and download again") from None
    final = destination / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging / name, final)
    shutil.rmtree(staging, ignore_errors=True)


def download_dataset(name: str, to: Path, show_progress: bool = True) -> Path:
    """Fetch ``NAME.zip`` (from ``$UNPAIRED_DATASETS_URL`` or the CycleGAN server) into ``to/NAME``.

    An already complete folder is kept; an interrupted download resumes from its ``.part`` file.
    """
    to.mkdir(parents=True, exist_ok=True)
    folder = to / name
    if is_complete(folder):
        return folder
    url = f"{os.environ.get(URL_ENV, DEFAULT_URL).rstrip('/')}/{name}.zip"
    part = to / f"{name}.zip.part"
    _fetch(url, part, show_progress)
    _extract(part, name, to)
    part.unlink()
    return folder
