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
from unpaired.errors import Notice, StopRequested
from unpaired.plugin_api.components import (
    Choice,
    FeatureEncoder,
    GanLoss,
    ImagePool,
    LossWeights,
    LossWeightSchedule,
    Norm,
    TrainingProgress,
    describe,
    feature_layers,
)
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
from unpaired.plugin_api.methods import DIRECTIONS, Direction, Method, MethodParts, Runtime, fool, forward_each, judge
from unpaired.plugin_api.metrics import Metric, Score
from unpaired.signals import deferred_signals, stop_requested

_FRAMEWORK_TYPES = {
    "RunResult": "unpaired.storage.records",
    "Study": "unpaired.config.study",
    "StudySummary": "unpaired.storage.lifecycle",
    "RunOutcome": "unpaired.storage.lifecycle",
    "Executor": "unpaired.execution.jobs",
    "ExecutorContext": "unpaired.execution.jobs",
    "RunJob": "unpaired.execution.jobs",
    "train_job": "unpaired.execution.jobs",
    "write_job": "unpaired.execution.worker",
    "worker_command": "unpaired.execution.worker",
    "read_outcome": "unpaired.execution.worker",
}
"""What lifecycle hooks receive besides ``RunInfo``, and what executors use: defined in the framework's own layers,
imported on first use."""


def __getattr__(name: str) -> object:
    if name in _FRAMEWORK_TYPES:
        import importlib

        return getattr(importlib.import_module(_FRAMEWORK_TYPES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Choice",
    "DIRECTIONS",
    "IMAGE_EXTENSIONS",
    "DataError",
    "Direction",
    "Domain",
    "Executor",
    "ExecutorContext",
    "FeatureEncoder",
    "GanLoss",
    "ImagePool",
    "LossWeightSchedule",
    "LossWeights",
    "Method",
    "MethodParts",
    "Metric",
    "Norm",
    "Notice",
    "RunInfo",
    "RunJob",
    "RunOutcome",
    "RunResult",
    "Runtime",
    "Score",
    "Split",
    "StopRequested",
    "Study",
    "StudySummary",
    "TrainingProgress",
    "Transform",
    "TransformParams",
    "UnpairedData",
    "deferred_signals",
    "describe",
    "feature_layers",
    "fool",
    "forward_each",
    "hookimpl",
    "judge",
    "list_images",
    "load_image",
    "read_outcome",
    "stop_requested",
    "train_job",
    "worker_command",
    "write_job",
]
