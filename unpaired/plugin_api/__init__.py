"""The contract between the framework and its plugins: everything a plugin author imports.

``hookspecs`` (the hooks and what each must do), ``components`` (the component kinds and
the interfaces norms, GAN losses, image pools and loss weights implement), ``methods`` and
``metrics`` (the interfaces training methods and metrics implement), ``data`` (the
interface datasets implement, with image helpers), ``lifecycle`` (what lifecycle hooks
receive) and ``registry`` (how plugins are found, and their components looked up and built).
The names a plugin needs are exported here::

    from unpaired.plugin_api import hookimpl, Norm, UnpairedData
"""

from unpaired import hookimpl
from unpaired.errors import Notice
from unpaired.plugin_api.components import GanLoss, ImagePool, LossWeights, LossWeightSchedule, Norm, TrainingProgress
from unpaired.plugin_api.data import (
    IMAGE_EXTENSIONS,
    DataError,
    Domain,
    Split,
    Transform,
    TransformParams,
    UnpairedData,
    list_images,
    load_image,
)
from unpaired.plugin_api.lifecycle import RunInfo
from unpaired.plugin_api.methods import DIRECTIONS, Direction, Method, MethodParts, Runtime, forward_each
from unpaired.plugin_api.metrics import Metric, Score

_FRAMEWORK_TYPES = {"RunResult": "unpaired.results.records", "Study": "unpaired.config.study",
                    "StudySummary": "unpaired.execution.runner"}
"""What lifecycle hooks receive besides ``RunInfo``: defined in the framework's own layers, imported on first use."""


def __getattr__(name: str) -> object:
    if name in _FRAMEWORK_TYPES:
        import importlib

        return getattr(importlib.import_module(_FRAMEWORK_TYPES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DIRECTIONS", "IMAGE_EXTENSIONS", "DataError", "Direction", "Domain", "GanLoss", "ImagePool", "LossWeightSchedule", "LossWeights",
    "Method", "MethodParts", "Metric", "Norm", "Notice", "RunInfo", "RunResult", "Runtime", "Score", "Split", "Study", "StudySummary",
    "TrainingProgress", "Transform",
    "TransformParams", "UnpairedData", "forward_each", "hookimpl", "list_images", "load_image",
]
