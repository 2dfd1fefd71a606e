"""Drawing the words a study chose (variant, method and loss names) in figures exactly as written and told apart.

matplotlib reads text between two ``$`` as mathtext: a variant named ``$\\frac{$`` made every figure, and with them the
report, fail. And a character the font has no glyph for is drawn as an empty box: two variants named in Chinese were
one legend entry twice. So figures draw with mathtext off, and such characters as their code points (``\\u540d``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from types import ModuleType
from typing import Any


@contextlib.contextmanager
def pyplot() -> Iterator[ModuleType]:
    """matplotlib's pyplot, off-screen (Agg), drawing every text as written (no mathtext) while the block runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"text.parse_math": False}):
        yield plt


def drawable(text: str) -> str:
    """``text`` with each character that :func:`font_path`'s font cannot draw written as its code point (``\\u540d``)."""
    face = _face()
    return "".join(c if c.isspace() or face.get_char_index(ord(c)) else c.encode("ascii", "backslashreplace").decode() for c in text)


@functools.cache
def font_path() -> str:
    """The font file matplotlib draws figure text with (its bundled DejaVu Sans unless configured otherwise)."""
    from matplotlib import font_manager

    return str(font_manager.findfont(font_manager.FontProperties()))


@functools.cache
def _face() -> Any:
    from matplotlib.ft2font import FT2Font

    return FT2Font(font_path())
