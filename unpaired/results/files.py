"""Writing files so that a crash at any moment leaves the old version or the new one, never half of one;
reading them back with errors that name the file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from unpaired.errors import InputError


class CorruptFileError(InputError):
    """A file the project wrote cannot be read back; the message names it and says what to do."""


def _atomic_write(path: Path, mode: str, write: Callable[[IO[Any]], None]) -> None:
    """Make ``path`` hold what ``write`` writes, so that a crash at any moment leaves either the old file
    or the new one: write a temporary file in the same folder, fsync it, then rename it over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_save(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``state`` to ``path`` atomically."""
    _atomic_write(path, "wb", lambda file: torch.save(state, file))


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    _atomic_write(path, "w", lambda file: file.write(text))


def atomic_write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a file that is not JSON raises :class:`CorruptFileError` naming it."""
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error}); delete it or restore it from a backup") from None


def load_tensors(path: Path) -> dict[str, Any]:
    """What :func:`atomic_save` wrote, loaded onto the CPU with ``weights_only=True`` (no code runs from the file)."""
    return torch.load(path, map_location="cpu", weights_only=True)
