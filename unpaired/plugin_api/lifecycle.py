"""What the lifecycle hooks are told about a run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """One run (a variant trained with one seed) as lifecycle hooks see it.

    ``run_id`` identifies the run's result (a hash of everything that can change it, seed
    included); ``variant_key`` the variant's configuration whatever the seed. ``variant`` is
    the name the study gave it (None for ``unpaired train``).
    """

    run_id: str
    variant_key: str
    variant: str | None
    seed: int
    folder: Path
    spec: dict[str, Any]
    """The resolved variant as plain data (what ``spec.json`` holds)."""
