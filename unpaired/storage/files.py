"""Writing files so that a crash at any moment leaves the old version or the new one, never half of one;
reading them back with errors that name the file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from unpaired.errors import InputError, UnpairedError


class CorruptFileError(InputError):
    """A file the project wrote cannot be read back; ``path`` is the file, the message says what is wrong and what to do."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path} {problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (worker -> study)
        return type(self), (self.path, self.problem)


class StorageError(UnpairedError):
    """A file could not be written (disk full, read-only, no permission); its previous version is intact."""


def check_makeable_folder(folder: Path, what: str) -> None:
    """Raise :class:`InputError` when ``folder`` cannot be made because it, or the nearest part of its path that exists,
    is a file; ``what`` names it for the message (``the output folder``, ``--out``)."""
    existing = next((path for path in (folder, *folder.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "it" if existing == folder else str(existing)
        raise InputError(f"{what} {folder} cannot be made: {where} is a file; name a folder")


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (made, with its folder, when missing) while the block runs: one
    process at a time, across processes; released however the block ends, and by the system if the process dies."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError  # unreachable


def _write_failed(path: Path, size: int, error: OSError) -> StorageError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        return StorageError(
            f"no space left to write {path}: it needs {_size(size)}, {_size(free)} are free there "
            "(the previous version, if any, is intact). Free some space, then run the same command again."
        )
    return StorageError(f"cannot write {path}: {error.strerror or error} (the previous version, if any, is intact)")


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it


def _atomic_write(path: Path, data: bytes) -> None:
    """Make ``path`` hold ``data``, so that a crash at any moment leaves either the old file or the new one:
    write a temporary file in the same folder, fsync it, then rename it over the target. An OS error
    (disk full, read-only, ...) raises :class:`StorageError` naming the file, the size and the free space."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~_UMASK)  # as open() would make it (mkstemp's is private to the owner)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _write_failed(path, len(data), error) from error
        raise


def atomic_save(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (serialised in memory first, so that a full disk
    is reported as such, with the size needed)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _atomic_write(path, buffer.getvalue())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    _atomic_write(path, data)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    _atomic_write(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a file that is not JSON raises :class:`CorruptFileError` naming it."""
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(path, f"is not valid JSON ({error}); delete it or restore it from a backup") from None


def load_tensors(path: Path) -> Any:
    """What :func:`atomic_save` wrote, loaded onto the CPU with ``weights_only=True`` (no code runs from the file).
    A file that is not a torch archive, or one holding Python objects besides tensors and plain values, raises
    :class:`CorruptFileError` saying so (torch's own advice, to load it with ``weights_only=False``, is unsafe)."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as file:
            torn = file.read(4) == b"PK\x03\x04"  # began as one: cut short or damaged since
        raise CorruptFileError(
            path,
            "is a torn torch archive (cut short or damaged)"
            if torn
            else "is not a torch file (torch.save writes a zip archive; this is not one): name a file unpaired wrote",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        holds = f"a {found[1]} object" if found else "Python objects besides tensors and plain values"
        raise CorruptFileError(path, f"holds {holds}, which unpaired does not load (no code may run from a file it reads)") from None
