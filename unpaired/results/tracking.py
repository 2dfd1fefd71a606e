"""MLflow tracking, a hook plugin: one experiment per study, a parent MLflow run per study invocation,
a nested child MLflow run per run (variant x seed) that a resumed training continues.

This module is registered through the ``unpaired`` entry points like any plugin; for each study
that has tracking enabled it returns a :class:`StudyTracker` listener, which follows the study
through the lifecycle hooks in every process that trains one of its runs. The child's id is kept
in the run folder, so a resume logs into the same MLflow run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from unpaired import ENTRY_POINT_GROUP, hookimpl
from unpaired.config.overrides import flatten
from unpaired.errors import UnpairedError
from unpaired.results.compare import write_comparison
from unpaired.results.run_folder import RunFolder

EPOCH_MARKER = "lr"
"""A metric every epoch logs (the epoch-end hook always carries it): its history says which epochs were logged."""


class TrackingError(UnpairedError):
    """The tracking server cannot be used; the message names it."""


def tracking_uri(configured: str | None) -> str | None:
    """``$MLFLOW_TRACKING_URI`` if set, else the study's ``tracking.uri``, else None (MLflow's own default)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or None


def check_reachable(uri: str | None) -> None:
    """Fail fast, naming the URI, when an HTTP tracking server does not answer its health check."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
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


def _client(uri: str | None) -> Any:
    from mlflow.tracking import MlflowClient  # imported here: mlflow takes a while to import

    return MlflowClient(tracking_uri=uri)


def flatten_params(resolved: dict[str, Any]) -> dict[str, str]:
    """``{"generator": {"n_blocks": 9}}`` -> ``{"generator.n_blocks": "9"}`` (MLflow params are strings)."""
    return {key: json.dumps(value) if isinstance(value, (list, tuple)) else str(value) for key, value in flatten(resolved).items()}


def plugin_versions() -> str:
    """``dist version`` of every installed distribution providing unpaired plugins."""
    found = {f"{ep.dist.metadata['Name']} {ep.dist.version}" for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.dist}
    return ", ".join(sorted(found))


def git_commit() -> str | None:
    """The commit checked out in the working directory, if it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class StudyTracker:
    """Logs one study invocation to MLflow through the lifecycle hooks: the parent MLflow run, a child per run."""

    def __init__(self, uri: str | None, study: str, source: str, baseline: str, planned_seeds: int, log_generators: bool, metric: str):
        self.uri, self.study, self.source, self.baseline = uri, study, source, baseline
        self.planned_seeds, self.log_generators, self.metric = planned_seeds, log_generators, metric
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client: Any = None
        self.children: dict[str, str] = {}
        """Run id -> MLflow run id of the child runs this process logs to."""
        self.logged_epochs: dict[str, set[int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """What a worker process gets: the study's MLflow coordinates, not this process's connection or children."""
        return {**self.__dict__, "_client": None, "children": {}, "logged_epochs": {}}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    @hookimpl
    def unpaired_on_study_start(self, study: Any, out: Path) -> None:
        """Check that the server answers, then create (or find) the study's experiment and open a parent run holding the study file."""
        check_reachable(self.uri)
        with first_use_serialised(self.uri):
            experiment = self.client.get_experiment_by_name(self.study)
            self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.study)
        tags = {"unpaired.study": self.study, "unpaired.role": "study", "unpaired.baseline": self.baseline,
                "unpaired.plugins": plugin_versions()}
        if commit := git_commit():
            tags["unpaired.git_commit"] = commit
        parent = self.client.create_run(self.experiment_id, run_name=f"{self.study} ({time.strftime('%Y-%m-%d %H:%M')})", tags=tags)
        self.parent_run_id = parent.info.run_id
        if Path(self.source).is_file():
            self.client.log_artifact(self.parent_run_id, self.source)

    @hookimpl
    def unpaired_on_variant_start(self, run: Any) -> None:
        """Continue the MLflow run recorded in the run folder, else open a new child of the parent."""
        folder = RunFolder(Path(run.folder))
        known = folder.read_tracking_link()
        if known and known.get("tracking_uri") == self.uri:
            try:
                self.client.update_run(known["run_id"], status="RUNNING")
                # epochs after the last checkpoint are trained (identically) again: log each once
                self.logged_epochs[run.run_id] = self._logged_epochs(known["run_id"])
                self.children[run.run_id] = known["run_id"]
                return
            except Exception:  # deleted or from another store: start a new one
                pass
        self.children[run.run_id] = self._new_child(run, folder)

    def _new_child(self, run: Any, folder: RunFolder) -> str:
        from mlflow.entities import Param, RunTag

        tags = {"mlflow.parentRunId": self.parent_run_id, "unpaired.study": self.study, "unpaired.role": "variant",
                "unpaired.variant": run.variant, "unpaired.run_id": run.run_id, "unpaired.variant_key": run.variant_key,
                "unpaired.seed": str(run.seed), "unpaired.planned_seeds": str(self.planned_seeds), "unpaired.status": "running",
                "unpaired.plugins": plugin_versions()}
        if commit := git_commit():
            tags["unpaired.git_commit"] = commit
        child_id = self.client.create_run(self.experiment_id, run_name=f"{run.variant} seed{run.seed}", tags=tags).info.run_id
        params = [Param(k, v[:6000]) for k, v in flatten_params(run.spec).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(child_id, params=params[start : start + 100], tags=[RunTag("unpaired.folder", str(folder))] if start == 0 else [])
        folder.write_tracking_link(self.uri, child_id)
        return child_id

    def _log_metrics(self, child_id: str, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
        if metrics:
            self.client.log_batch(child_id, metrics=metrics)

    def _logged_epochs(self, child_id: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(child_id, EPOCH_MARKER)}

    @hookimpl
    def unpaired_on_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        if run.run_id in self.children and epoch not in self.logged_epochs.get(run.run_id, ()):
            self._log_metrics(self.children[run.run_id], metrics, step=epoch)

    @hookimpl
    def unpaired_on_variant_end(self, run: Any, result: Any) -> None:
        child_id = self.children.get(run.run_id)
        if child_id is None:
            return
        folder = RunFolder(Path(run.folder))
        self.client.set_tag(child_id, "unpaired.status", result.status)
        if result.status == "finished":
            self._log_missing_epochs(child_id, folder)
            self._log_metrics(child_id, result.metrics, step=result.epochs)
            self._log_artifacts(child_id, folder)
            if "unpaired.error" in self.client.get_run(child_id).data.tags:  # left by an earlier failed attempt
                self.client.delete_tag(child_id, "unpaired.error")
            self.client.set_terminated(child_id, "FINISHED")
        elif result.status == "failed":
            self.client.set_tag(child_id, "unpaired.error", (result.error or "")[:5000])
            if folder.error_file.is_file():
                self.client.log_artifact(child_id, str(folder.error_file))
            self.client.set_terminated(child_id, "FAILED")
        else:
            self.client.set_terminated(child_id, "KILLED")

    def _log_missing_epochs(self, child_id: str, folder: RunFolder) -> None:
        """Epochs whose hook never ran (e.g. a crash right after their checkpoint) are logged from the history."""
        logged = self._logged_epochs(child_id)
        for row in folder.read_history():
            if row["epoch"] not in logged:
                self._log_metrics(child_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    def _log_artifacts(self, child_id: str, folder: RunFolder) -> None:
        for path in folder.finished_files():
            self.client.log_artifact(child_id, str(path))
        if folder.samples.is_dir():
            self.client.log_artifacts(child_id, str(folder.samples), folder.samples.name)
        if self.log_generators and folder.generators.is_dir():
            self.client.log_artifacts(child_id, str(folder.generators), folder.generators.name)

    @hookimpl
    def unpaired_on_study_end(self, study: Any, out: Path, summary: Any) -> None:
        """Attach the comparison to the parent run and close it: KILLED when a signal stopped the study,
        FAILED (with the reason) when it broke off or a run failed, else FINISHED."""
        if self.parent_run_id is None:
            return
        if summary.aborted:
            self.client.set_tag(self.parent_run_id, "unpaired.error", summary.aborted[:5000])
        else:
            for path in write_comparison(self.study, self.uri, self.baseline, self.metric, out):
                self.client.log_artifact(self.parent_run_id, str(path))
        if summary.stopped_by is not None:
            status = "KILLED"
        else:
            status = "FAILED" if summary.failed or summary.interrupted or summary.aborted else "FINISHED"
        self.client.set_terminated(self.parent_run_id, status)


@hookimpl
def unpaired_study_listeners(study: Any) -> list[object]:
    """A :class:`StudyTracker` for a study whose ``tracking`` is enabled."""
    settings = study.spec.tracking
    if not settings.enabled:
        return []
    return [StudyTracker(tracking_uri(settings.uri), study.spec.name, study.source, study.baseline, len(study.spec.seeds),
                         settings.log_generators, settings.metric)]
