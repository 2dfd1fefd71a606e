"""Text in aligned columns for a terminal, where an East Asian wide character takes two cells and a combining mark none."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def display_width(text: str) -> int:
    """How many terminal cells ``text`` takes: two for a wide or full-width character (``名``), none for a combining
    mark or a zero-width one, one for the rest."""
    return sum(_cells(character) for character in text)


def _cells(character: str) -> int:
    if unicodedata.combining(character) or unicodedata.category(character) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(character) in ("W", "F") else 1


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` as lines whose columns line up on a terminal, two spaces apart, with no trailing spaces; the last
    column is left as long as it is."""
    widths = [max((display_width(row[i]) for row in rows if i < len(row)), default=0) for i in range(max(map(len, rows), default=0))]
    return ["  ".join(cell + " " * (width - display_width(cell)) for cell, width in zip(row, widths)).rstrip() for row in rows]
