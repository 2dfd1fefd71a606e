"""Run-folder files: atomic writes, checkpoints (finding the latest, every RNG state), the result."""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

_NAME = re.compile(r"^epoch-(\d+)-step-(\d+)\.pt$")


def checkpoint_name(epoch: int, global_step: int) -> str:
    """File name of the checkpoint taken after ``epoch`` complete epochs and ``global_step`` steps."""
    return f"epoch-{epoch:04d}-step-{global_step:09d}.pt"


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


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the most steps in ``folder`` (temporary files of interrupted writes are ignored)."""
    if not folder.is_dir():
        return None
    found = [(int(m[2]), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with ``weights_only=True`` (no code is executed from the file)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def remove_older_checkpoints(folder: Path, keep: Path) -> None:
    """Delete every checkpoint in ``folder`` except ``keep`` (after ``keep`` was written successfully)."""
    for path in folder.iterdir():
        if _NAME.match(path.name) and path != keep:
            path.unlink(missing_ok=True)


def capture_rng() -> dict[str, Any]:
    """The state of every global RNG: Python, NumPy, torch CPU and all CUDA devices."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": numpy_state[2],
                  "has_gauss": numpy_state[3], "cached_gaussian": numpy_state[4]},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` returned."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_result(out_dir: Path) -> dict[str, Any] | None:
    """The ``result.json`` of a variant folder, or None when the variant has not stopped there yet."""
    path = Path(out_dir) / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None
