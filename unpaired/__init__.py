"""unpaired: ablation studies for unpaired image-to-image translation (CycleGAN).

Plugin authors need only :mod:`unpaired.plugin_api`: ``hookimpl`` to mark hook
implementations, the component and dataset interfaces, and the hooks' contract.
"""

import pluggy

__version__ = "0.2.0"

PROJECT_NAME = "unpaired"
ENTRY_POINT_GROUP = "unpaired"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations in plugins: ``@hookimpl def unpaired_register_generators(register): ...``."""

__all__ = ["ENTRY_POINT_GROUP", "PROJECT_NAME", "__version__", "hookimpl"]
