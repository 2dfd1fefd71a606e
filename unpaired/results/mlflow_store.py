"""Talking to an MLflow tracking store: where it is, whether it answers, requests that give up in bounded time,
and what a tracked run records about its code and its run folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from unpaired import ENTRY_POINT_GROUP
from unpaired.config.overrides import flatten
from unpaired.errors import UnpairedError
from unpaired.storage.files import CorruptFileError
from unpaired.storage.run_folder import RunFolder

RUN_ROLE = "run"
"""The ``unpaired.role`` tag of a run's MLflow run (a study's is ``study``)."""
RUN_ROLES = (RUN_ROLE, "variant")
"""The role tags a run's MLflow run may carry: ``variant`` is what 0.1 wrote, still read."""
_REQUEST_SETTINGS = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
)
_SET_BY_USER = {name for name in _REQUEST_SETTINGS if name in os.environ}
"""MLflow's HTTP settings the user set in the environment: those are kept as they are."""


def bound_requests(timeout: float) -> None:
    """Make every MLflow HTTP call give up within about ``timeout`` seconds (two tries of half of it each, no back-off),
    instead of MLflow's default of minutes, unless the user set MLflow's own ``MLFLOW_HTTP_REQUEST_*`` variables."""
    bounded = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout // 2))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    }
    for name, value in bounded.items():
        if name not in _SET_BY_USER:
            os.environ[name] = value


class TrackingError(UnpairedError):
    """The tracking server cannot be used; the message names it."""


def tracking_uri(configured: str | None) -> str | None:
    """``$MLFLOW_TRACKING_URI`` if set, else the study's ``tracking.uri``, else None (MLflow's own default)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or None


def check_shareable(uri: str | None, machines: int) -> None:
    """Refuse a SQLite or file store when runs train on several machines: SQLite on a shared file system is
    not safe to write from several machines at once. An ``mlflow server`` is."""
    import mlflow

    resolved = uri or mlflow.get_tracking_uri()
    if machines > 1 and not resolved.startswith(("http://", "https://", "databricks")):
        raise TrackingError(
            f"the MLflow store {resolved} cannot be written safely from the {machines} machines of this cluster. Start an "
            "`mlflow server` one node runs and all reach, and point MLFLOW_TRACKING_URI or the study's tracking.uri at it "
            "(http://HOST:5000), or set tracking: {enabled: false}."
        )


def check_reachable(uri: str | None, timeout: float) -> None:
    """Fail fast, naming the URI, when an HTTP tracking server does not answer its health check within ``timeout`` seconds."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        raise TrackingError(
            f"the MLflow tracking server {uri} is unreachable ({getattr(error, 'reason', error)}). Start it "
            f"(mlflow server ...), or point MLFLOW_TRACKING_URI / the study's tracking.uri elsewhere, or set "
            f"tracking: {{enabled: false}}."
        ) from None


@contextlib.contextmanager
def first_use_serialised(uri: str | None) -> Iterator[None]:
    """Hold an exclusive lock next to a SQLite store: MLflow creates a fresh store's tables on first use,
    and two processes doing that at once collide (``duplicate column name``)."""
    import mlflow

    resolved = uri or mlflow.get_tracking_uri()
    if not resolved.startswith("sqlite:///"):
        yield
        return
    database = Path(resolved.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def client(uri: str | None, timeout: float) -> Any:
    """An MlflowClient for ``uri`` whose HTTP calls give up after about ``timeout`` seconds (see :func:`bound_requests`)."""
    from mlflow.tracking import MlflowClient  # imported here: mlflow takes a while to import

    bound_requests(timeout)
    return MlflowClient(tracking_uri=uri)


def flatten_params(resolved: dict[str, Any]) -> dict[str, str]:
    """``{"generator": {"n_blocks": 9}}`` -> ``{"generator.n_blocks": "9"}`` (MLflow params are strings)."""
    return {key: json.dumps(value) if isinstance(value, (list, tuple)) else str(value) for key, value in flatten(resolved).items()}


def plugin_versions() -> str:
    """``dist version`` of every installed distribution providing unpaired plugins."""
    found = {f"{ep.dist.metadata['Name']} {ep.dist.version}" for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.dist}
    return ", ".join(sorted(found))


def folder_tag(folder: RunFolder) -> str:
    """The run folder as its MLflow child records it: an absolute path, however ``--out`` was spelt."""
    return str(folder.path.resolve())


def tracking_link(folder: RunFolder) -> dict[str, Any] | None:
    """The MLflow run the folder records (``mlflow_run.json``), or None (none, or corrupt: it is rewritten once the child
    is found or created again)."""
    try:
        return folder.read_tracking_link()
    except CorruptFileError:  # rewritten once the child is found or created again
        return None


def finished_here(folder: RunFolder) -> bool:
    """Whether the folder holds a finished result (a corrupt one is not)."""
    try:
        result = folder.read_result()
    except CorruptFileError:
        return False
    return result is not None and result.finished


def tracking_complete(folder: RunFolder, uri: str | None) -> bool:
    """Whether the folder's MLflow run at ``uri`` holds everything the folder does."""
    link = tracking_link(folder)
    return bool(link and link.get("tracking_uri") == uri and link.get("complete"))


def log_spec(mlflow_client: Any, run_id: str, spec: dict[str, Any], folder: RunFolder) -> None:
    """Log a run's resolved spec as the params of its MLflow run, 100 a batch (MLflow's limit), the folder tag again
    with the first (a create and its first batch are the window a kill may split)."""
    from mlflow.entities import Param, RunTag

    params = [Param(k, v[:6000]) for k, v in flatten_params(spec).items()]
    for start in range(0, len(params), 100):
        tag = [RunTag("unpaired.folder", folder_tag(folder))] if start == 0 else []
        mlflow_client.log_batch(run_id, params=params[start : start + 100], tags=tag)


def log_metrics(mlflow_client: Any, run_id: str, values: dict[str, float], step: int) -> None:
    """Log the numeric ``values`` at ``step``, in one batch."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
    if metrics:
        mlflow_client.log_batch(run_id, metrics=metrics)
