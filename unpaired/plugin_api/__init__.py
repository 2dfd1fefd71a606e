"""The contract between the framework and its plugins: everything a plugin author imports.

``hookspecs`` (the hooks and what each must do), ``components`` (the component kinds and
the interfaces norms, GAN losses, image pools and loss weights implement), ``methods`` and
``metrics`` (the interfaces training methods and metrics implement), ``data`` (the
interface datasets implement, with image helpers), ``lifecycle`` (what lifecycle hooks
receive: runs, studies, results and outcomes), ``executors`` (the executor contract) and
``registry`` (how plugins are found, and their components looked up and built).
The names a plugin needs are exported here::

    from unpaired.plugin_api import hookimpl, Norm, UnpairedData
"""

from unpaired import hookimpl
from unpaired.errors import Notice, StopRequested, listed
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
    MAX_SIDE,
    UNREADABLE_IMAGE,
    DataError,
    Domain,
    Split,
    Transform,
    TransformParams,
    UnpairedData,
    list_images,
    load_image,
)
from unpaired.plugin_api.executors import Collect, Executor, ExecutorContext, RunJob, Workers
from unpaired.plugin_api.lifecycle import Ending, Outcome, RunInfo, RunOutcome, RunResult, Scoring, StudyInfo, StudySummary
from unpaired.plugin_api.methods import DIRECTIONS, Direction, Method, MethodParts, Runtime, fool, forward_each, judge
from unpaired.plugin_api.metrics import Metric, Score
from unpaired.signals import deferred_signals, stop_requested

__all__ = [
    "MAX_SIDE",
    "Choice",
    "Collect",
    "Ending",
    "Outcome",
    "Scoring",
    "StudyInfo",
    "Workers",
    "DIRECTIONS",
    "IMAGE_EXTENSIONS",
    "UNREADABLE_IMAGE",
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
    "listed",
    "load_image",
    "stop_requested",
]
