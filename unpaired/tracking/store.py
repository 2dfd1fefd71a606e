"""Talking to an MLflow tracking store: where it is, whether it answers, requests that give up in bounded time,
and what a tracked run records about its code and its run folder."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
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
from unpaired.storage.files import CorruptFileError, exclusive_lock
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


def deleted_experiment(experiment: Any, store: str) -> str | None:
    """What to do about the study's MLflow experiment when it is deleted (in MLflow's UI, say), else None. MLflow keeps
    a deleted experiment's name, so no new one can take it, and its runs are not searched."""
    if experiment is None or experiment.lifecycle_stage != "deleted":
        return None
    number = experiment.experiment_id
    return (
        f"the MLflow experiment {experiment.name!r} (id {number}) at {store} is deleted, and MLflow keeps its name: "
        f"restore it (`mlflow experiments restore --experiment-id {number}`, its runs come back with it), or remove it "
        f"for good (`mlflow gc --experiment-ids {number}` with the store's --backend-store-uri) so that a new one is made"
    )


def first_line(error: BaseException) -> str:
    """The first line of an error's message, at most 300 characters (MLflow's can hold a whole HTML page). For an error
    of MLflow's database, the database's own message (``database or disk is full``): SQLAlchemy may put a line of its own
    first (``(raised as a result of Query-invoked autoflush; ...``)."""
    told = _database_error(error) or error
    return (str(told) or type(told).__name__).splitlines()[0][:300]


def _database_error(error: BaseException) -> BaseException | None:
    """The database driver's error that SQLAlchemy wraps (as ``orig``) somewhere in ``error``'s chain, or None."""
    seen: BaseException | None = error
    for _ in range(10):  # a chain is a few links long (and could loop)
        if seen is None:
            break
        if isinstance(original := getattr(seen, "orig", None), BaseException):
            return original
        seen = seen.__cause__ or seen.__context__
    return None


def quiet_mlflow_logs() -> None:
    """Keep MLflow's own log lines off the terminal (a store's creation; a traceback for each database error it raises,
    which unpaired names in one line), unless the user asks for them with MLflow's ``MLFLOW_LOGGING_LEVEL``; and its
    progress bar for every artifact read (``compare NAME`` reads the study's), unless the user set
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``."""
    import mlflow  # noqa: F401  (importing it first sets its loggers' level, which this then overrides)

    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        logging.getLogger("mlflow").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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


def sqlite_database(uri: str | None) -> Path | None:
    """The file of a SQLite store (``sqlite:///mlflow.db``, MLflow's default), else None."""
    import mlflow

    resolved = uri or mlflow.get_tracking_uri()
    return Path(resolved.removeprefix("sqlite:///")) if resolved.startswith("sqlite:///") else None


@contextlib.contextmanager
def first_use_serialised(uri: str | None) -> Iterator[None]:
    """Hold an exclusive lock next to a SQLite store while it is first used, after making sure it is whole: a missing
    store is created whole (:func:`create_whole`), one that is not is refused with how to recover it
    (:func:`check_whole`). Two processes creating the study's experiment at once do not collide either."""
    database = sqlite_database(uri)
    if database is None:
        yield
        return
    with exclusive_lock(Path(f"{database}.lock")):
        if database.exists() and _inspect(database)[0]:
            check_whole(database)
        else:  # absent, or a file without tables: it holds nothing
            create_whole(database)
        yield


@contextlib.contextmanager
def reading(uri: str | None, timeout: float) -> Iterator[None]:
    """Read a study's runs from the store at ``uri`` (None: MLflow's default) in bounded time: a missing or broken
    SQLite store, a server that does not answer its health check within ``timeout`` seconds, and an MLflow call that
    fails or gives up (see :func:`bound_requests`) are each one :class:`TrackingError` naming the store."""
    import mlflow

    database = sqlite_database(uri)
    if database is not None:
        if not database.is_file():
            raise TrackingError(
                f"there is no MLflow store at {database}: run the study first, or point MLFLOW_TRACKING_URI or the study's "
                "tracking.uri at the store it used"
            )
        check_whole(database)
    check_reachable(uri, timeout)
    quiet_mlflow_logs()
    bound_requests(timeout)
    try:
        yield
    except UnpairedError:
        raise
    except Exception as error:
        raise TrackingError(
            f"the MLflow store {uri or mlflow.get_tracking_uri()} failed to answer within {timeout:g} s "
            f"({type(error).__name__}: {first_line(error)}). Check it, or compare "
            "the study's output folder instead (unpaired compare runs/STUDY)."
        ) from None


def create_whole(database: Path) -> None:
    """Create a SQLite store with all its tables in a temporary file, then rename it into place: MLflow's own creation
    takes seconds, and a Ctrl-C or kill during it leaves a half-migrated store that MLflow can never open again. Called
    under the store's lock, so a leftover temporary file is a killed creation's."""
    from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store  # what MLflow builds for sqlite:// itself

    building = database.with_name(f"{database.name}.creating")
    for leftover in (building, Path(f"{building}-journal")):
        leftover.unlink(missing_ok=True)
    store = _get_sqlalchemy_store(f"sqlite:///{building}", None)
    store.engine.dispose()
    os.replace(building, database)


def check_whole(database: Path) -> None:
    """Refuse a SQLite store whose schema is not this MLflow's, saying how to recover it, instead of MLflow's traceback
    (``duplicate column name``, forever): one with no runs is a creation that was interrupted, one with runs was made by
    another MLflow version."""
    from mlflow import __version__ as mlflow_version
    from mlflow.store.db.utils import _get_latest_schema_revision

    _, revision, runs = _inspect(database)
    expected = _get_latest_schema_revision()
    if revision == expected:
        return
    found = f"schema revision {revision}" if revision else "no schema revision"
    if not runs:
        raise TrackingError(
            f"the MLflow store {database} is incomplete ({found}, no runs): creating it was interrupted. It holds "
            f"nothing: move it aside (mv {database} {database}.incomplete) and run again, which creates a new one."
        )
    raise TrackingError(
        f"the MLflow store {database} holds {runs} run(s) with {found}, and MLflow {mlflow_version} expects {expected}. "
        f"Back it up, then upgrade it (mlflow db upgrade sqlite:///{database}), or point MLFLOW_TRACKING_URI or the "
        "study's tracking.uri at another store."
    )


def _inspect(database: Path) -> tuple[set[str], str | None, int]:
    """A SQLite store's tables, schema revision (None without one) and number of runs, read without MLflow."""
    try:
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = db.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
            runs = db.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.DatabaseError as error:
        raise TrackingError(
            f"the MLflow store {database} cannot be read as a SQLite database ({error}). Move it aside, or point "
            "MLFLOW_TRACKING_URI or the study's tracking.uri at another store."
        ) from None
    return tables, version[0] if version else None, int(runs)


def client(uri: str | None, timeout: float) -> Any:
    """An MlflowClient for ``uri`` whose HTTP calls give up after about ``timeout`` seconds (see :func:`bound_requests`)."""
    from mlflow.tracking import MlflowClient  # imported here: mlflow takes a while to import

    quiet_mlflow_logs()
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


def log_metrics_once(mlflow_client: Any, run_id: str, values: dict[str, float], step: int) -> None:
    """Log the numeric ``values`` at ``step`` that the run does not hold there yet, so that logging them again (after a
    kill, or a rescore that added a metric) leaves each (metric, step) once. A value that changed (a rescore with another
    evaluation) is logged again at the step: MLflow shows the later one."""

    def held(key: str, value: float) -> bool:
        return any(
            m.step == step and (math.isclose(m.value, value, rel_tol=1e-9) or math.isnan(m.value) and math.isnan(value))
            for m in mlflow_client.get_metric_history(run_id, key)
        )

    log_metrics(mlflow_client, run_id, {k: v for k, v in values.items() if isinstance(v, (int, float)) and not held(k, float(v))}, step)
