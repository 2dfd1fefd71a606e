"""MLflow tracking: one experiment per study, a parent run per study invocation, a nested child run
per variant x seed that a resumed training continues.

The tracker attaches to the engine through the lifecycle hooks, like any plugin. The child run's
id is kept in the run folder (``mlflow_run.json``), so a resume logs into the same MLflow run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

from unpaired import ENTRY_POINT_GROUP, hookimpl
from unpaired.checkpoint import atomic_write_text
from unpaired.study import flatten

RUN_FILE = "mlflow_run.json"


class TrackingError(RuntimeError):
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
    """Logs one study invocation: creates the parent run, child runs, and receives engine hooks."""

    def __init__(self, uri: str | None, experiment_id: str, parent_run_id: str, log_generators: bool = True):
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.log_generators = log_generators
        self.client = _client(uri)
        self.children: dict[str, str] = {}
        self.logged_epochs: dict[str, set[int]] = {}

    @classmethod
    def start(cls, uri: str | None, study_name: str, study_file: str, baseline: str, log_generators: bool) -> StudyTracker:
        """Create (or find) the study's experiment and open a parent run holding the study file."""
        client = _client(uri)
        experiment = client.get_experiment_by_name(study_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(study_name)
        tags = {"unpaired.study": study_name, "unpaired.role": "study", "unpaired.baseline": baseline,
                "unpaired.plugins": plugin_versions()}
        if commit := git_commit():
            tags["unpaired.git_commit"] = commit
        parent = client.create_run(experiment_id, run_name=f"{study_name} ({time.strftime('%Y-%m-%d %H:%M')})", tags=tags)
        if Path(study_file).is_file():
            client.log_artifact(parent.info.run_id, study_file)
        return cls(uri, experiment_id, parent.info.run_id, log_generators)

    def child_for(self, folder: Path, variant: str, seed: int, run_id: str, planned_seeds: int, resolved: dict[str, Any]) -> str:
        """The MLflow run of one variant x seed: the one recorded in its folder (continued), else a new nested run."""
        from mlflow.entities import Param, RunTag

        record = folder / RUN_FILE
        if record.is_file():
            known = json.loads(record.read_text())
            if known.get("tracking_uri") == self.uri:
                try:
                    self.client.update_run(known["run_id"], status="RUNNING")
                    # epochs after the last checkpoint are trained (identically) again: log each once
                    self.logged_epochs[run_id] = self._logged_epochs(known["run_id"])
                    self.children[run_id] = known["run_id"]
                    return known["run_id"]
                except Exception:  # deleted or from another store: start a new one
                    pass
        tags = {"mlflow.parentRunId": self.parent_run_id, "unpaired.study": self.client.get_experiment(self.experiment_id).name,
                "unpaired.role": "variant", "unpaired.variant": variant, "unpaired.variant_id": run_id,
                "unpaired.seed": str(seed), "unpaired.planned_seeds": str(planned_seeds), "unpaired.status": "running",
                "unpaired.plugins": plugin_versions()}
        if commit := git_commit():
            tags["unpaired.git_commit"] = commit
        child = self.client.create_run(self.experiment_id, run_name=f"{variant} seed{seed}", tags=tags)
        child_id = child.info.run_id
        params = [Param(k, v[:6000]) for k, v in flatten_params(resolved).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(child_id, params=params[start : start + 100], tags=[RunTag("unpaired.folder", str(folder))] if start == 0 else [])
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps({"tracking_uri": self.uri, "run_id": child_id}))
        self.children[run_id] = child_id
        return child_id

    def _log_metrics(self, child_id: str, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
        if metrics:
            self.client.log_batch(child_id, metrics=metrics)

    def _logged_epochs(self, child_id: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(child_id, "cycle_A")}

    @hookimpl
    def unpaired_on_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        if run.variant_id in self.children and epoch not in self.logged_epochs.get(run.variant_id, ()):
            self._log_metrics(self.children[run.variant_id], metrics, step=epoch)

    @hookimpl
    def unpaired_on_variant_end(self, run: Any, result: dict[str, Any]) -> None:
        child_id = self.children.get(run.variant_id)
        if child_id is None:
            return
        status = result["status"]
        self.client.set_tag(child_id, "unpaired.status", status)
        if status == "finished":
            self._log_missing_epochs(child_id, Path(run.out_dir))
            self._log_metrics(child_id, result.get("metrics", {}), step=result.get("epochs", 0))
            self._log_artifacts(child_id, Path(run.out_dir))
            self.client.set_terminated(child_id, "FINISHED")
        elif status == "failed":
            self.client.set_tag(child_id, "unpaired.error", result.get("error", "")[:5000])
            error_file = Path(run.out_dir) / "error.txt"
            error_file.write_text(result.get("error", ""))
            self.client.log_artifact(child_id, str(error_file))
            self.client.set_terminated(child_id, "FAILED")
        else:
            self.client.set_terminated(child_id, "KILLED")

    def _log_missing_epochs(self, child_id: str, folder: Path) -> None:
        """Epochs whose hook never ran (e.g. a crash right after their checkpoint) are logged from history.json."""
        history_file = folder / "history.json"
        if not history_file.is_file():
            return
        logged = self._logged_epochs(child_id)
        for row in json.loads(history_file.read_text()):
            if row["epoch"] not in logged:
                self._log_metrics(child_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    def _log_artifacts(self, child_id: str, folder: Path) -> None:
        for name in ("spec.json", "history.csv", "history.json", "result.json"):
            if (folder / name).is_file():
                self.client.log_artifact(child_id, str(folder / name))
        if (folder / "samples").is_dir():
            self.client.log_artifacts(child_id, str(folder / "samples"), "samples")
        if self.log_generators and (folder / "generators").is_dir():
            self.client.log_artifacts(child_id, str(folder / "generators"), "generators")

    def finish(self, failed: bool, artifacts: list[Path]) -> None:
        """Attach the comparison files to the parent run and close it."""
        for path in artifacts:
            self.client.log_artifact(self.parent_run_id, str(path))
        self.client.set_terminated(self.parent_run_id, "FAILED" if failed else "FINISHED")
