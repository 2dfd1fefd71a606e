"""The plugins the command line uses: loaded once, with every problem loading them reported once."""

from __future__ import annotations

import functools
import sys

from unpaired.plugin_api.registry import PLUGINS_ENV, Registry, default_registry


@functools.cache
def registry() -> Registry:
    """The installed plugins' registry; plugins that failed to load, and distributions ``$UNPAIRED_PLUGINS``
    leaves out, are named on stderr the first time (a command that then misses a component says why)."""
    loaded = default_registry()
    for problem in loaded.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if loaded.excluded:
        print(f"note: {PLUGINS_ENV} leaves out {', '.join(sorted(loaded.excluded))}", file=sys.stderr)
    return loaded
