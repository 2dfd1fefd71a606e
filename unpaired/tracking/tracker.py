"""MLflow tracking, a hook plugin: one experiment per study, one parent MLflow run per study and output folder (every
invocation reopens it), a nested child MLflow run per run (variant x seed) that a resumed training continues.

This module is registered through the ``unpaired`` entry points like any plugin; for each study
that has tracking enabled it returns a :class:`StudyTracker` listener, which follows the study
through the lifecycle hooks in every process that trains one of its runs.

Tracking never stops training: once an MLflow call for a run fails (after bounded retries), the
tracker leaves that run alone in this process and its run folder says its tracking is incomplete.
The next invocation of the study completes it from the run folder, and closes the MLflow runs
that processes which died left RUNNING.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unpaired import hookimpl
from unpaired.errors import Notice, UnpairedError
from unpaired.config.study import TrackingConfig
from unpaired.plugin_api.lifecycle import RunInfo, RunResult, StudyInfo, StudySummary
from unpaired.storage.lease import process_alive
from unpaired.tracking.store import (
    RUN_ROLE,
    RUN_ROLES,
    TrackingError,
    check_reachable,
    check_shareable,
    client,
    deleted_experiment,
    finished_here,
    first_use_serialised,
    first_line,
    folder_tag,
    log_metrics,
    log_metrics_once,
    log_spec,
    plugin_versions,
    quiet_mlflow_logs,
    tracking_complete,
    tracking_link,
    tracking_uri,
)
from unpaired.storage.run_folder import RunFolder
from unpaired.results.current_plan import RECORDED_STUDY
from unpaired.results.study_folder import git_commit, report_path
from unpaired.tracking.parent import PARENT_ROLE, close_parent, log_aggregates, open_parent

STUDY = "study"
"""What :meth:`StudyTracker.guarded` is given, instead of a run id, for the study's own MLflow run."""
EPOCH_MARKER = "lr"
"""A metric every epoch logs (the epoch-end hook always carries it): its history says which epochs were logged."""


class StudyTracker:
    """Logs one study invocation to MLflow through the lifecycle hooks: the parent MLflow run, a child per run."""

    def __init__(self, uri: str | None, study: str, source: str, baseline: str, planned_seeds: int, log_generators: bool, timeout: float):
        self.uri = uri
        self.study = study
        self.source = source
        self.baseline = baseline
        self.timeout = timeout
        self.planned_seeds, self.log_generators = planned_seeds, log_generators
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client: Any = None
        self.children: dict[str, str] = {}
        """Run id -> MLflow run id of the child runs this process logs to."""
        self.logged_epochs: dict[str, set[int]] = {}
        self.lost: set[str] = set()
        """Runs whose tracking failed in this process: left alone from then on."""

    def __getstate__(self) -> dict[str, Any]:
        """What a worker process gets: the study's MLflow coordinates, not this process's connection or children."""
        return {**self.__dict__, "_client": None, "children": {}, "logged_epochs": {}, "lost": set()}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client(self.uri, self.timeout)
        return self._client

    @contextlib.contextmanager
    def guarded(self, run_id: str) -> Iterator[None]:
        """MLflow calls for one run: a failure is reported once and ends tracking of that run in this process."""
        try:
            yield
        except Exception as error:
            self.lost.add(run_id)
            warnings.warn(
                f"MLflow tracking of {'the study' if run_id == STUDY else f'run {run_id}'} stopped "
                f"({type(error).__name__}: {first_line(error)}); {'' if run_id == STUDY else 'training goes on, and '}"
                "the next `unpaired run` of the study logs what is missing",
                Notice,
                stacklevel=2,
            )

    @hookimpl
    def unpaired_on_study_start(self, study: StudyInfo, out: Path, machines: int) -> None:
        """Check that the store suits the machines and answers; open a parent run holding the study file; close what
        dead processes left RUNNING; complete the tracking of finished runs whose logging was cut short or whose child is
        gone from the store."""
        quiet_mlflow_logs()
        check_shareable(self.uri, machines)
        check_reachable(self.uri, self.timeout)
        with self._usable_store():
            with first_use_serialised(self.uri):
                experiment = self.client.get_experiment_by_name(self.study)
                if deleted := deleted_experiment(experiment, self._store()):
                    raise TrackingError(f"{deleted}; or set tracking: {{enabled: false}}")
                self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.study)
                self.client.set_experiment_tag(self.experiment_id, "mlflow.experimentKind", "custom_model_development")  # UI: runs
            children = [child for role in RUN_ROLES for child in self._search(f"tags.`unpaired.role` = '{role}'")]
            self._close_abandoned(children)
            tags = {
                "unpaired.study": self.study,
                "unpaired.baseline": self.baseline,
                "unpaired.plugins": plugin_versions(),
                "unpaired.owner": f"{socket.gethostname()}:{os.getpid()}",
            }
            if commit := git_commit():
                tags["unpaired.git_commit"] = commit
            self.parent_run_id = open_parent(self.client, self.experiment_id, self.study, out, tags)
            if Path(self.source).is_file():
                self.client.log_artifact(self.parent_run_id, self.source)
            self.client.log_dict(self.parent_run_id, study.spec, RECORDED_STUDY)  # as resolved, for compare NAME
        # the children in the store, with their parents: one deleted in MLflow's UI, or one of a store made anew at the
        # same URI, is not, and its finished run is logged again
        present = {child.info.run_id: child.data.tags.get("mlflow.parentRunId") for child in children}
        for run in study.runs:
            folder = RunFolder(run.folder)
            if not finished_here(folder):
                continue
            child_id = (tracking_link(folder) or {}).get("run_id")
            with self.guarded(run.run_id):
                if not tracking_complete(folder, self.uri) or child_id not in present:
                    self._complete(self._child(run, folder), folder)
                elif present[child_id] != self.parent_run_id:  # its parent was deleted in MLflow's UI: the new one adopts it
                    self.client.set_tag(child_id, "mlflow.parentRunId", self.parent_run_id)

    @contextlib.contextmanager
    def _usable_store(self) -> Iterator[None]:
        """MLflow calls before any training: a failure stops the study, naming the store (a server that answers its
        health check, yet not these calls: stuck, or not MLflow; a store MLflow cannot use, or whose database breaks)."""
        try:
            yield
        except UnpairedError:
            raise
        except Exception as error:
            store = self._store()
            served = store.startswith(("http://", "https://"))
            raise TrackingError(
                (
                    f"the MLflow tracking server {store} answers, but not to MLflow's calls within tracking.timeout "
                    f"({self.timeout:g} s): {first_line(error)}. Check the server (its database?), raise tracking.timeout, "
                    if served
                    else f"the MLflow store {store} cannot be used: {first_line(error)}. Check the tracking URI, "
                )
                + "or set tracking: {enabled: false}."
            ) from None

    def _store(self) -> str:
        import mlflow

        return self.uri or mlflow.get_tracking_uri()

    def _close_abandoned(self, children: list[Any]) -> None:
        """Parent runs whose process on this host is gone, and ``children`` whose run nobody holds, left RUNNING: KILLED."""
        host = socket.gethostname()
        for parent in self._search(f"tags.`unpaired.role` = '{PARENT_ROLE}' and attributes.status = 'RUNNING'"):
            owner_host, _, pid = parent.data.tags.get("unpaired.owner", "").partition(":")
            if owner_host == host and pid.isdigit() and not process_alive(int(pid)):
                self.client.set_terminated(parent.info.run_id, "KILLED")
        for child in (child for child in children if child.info.status == "RUNNING"):
            folder = child.data.tags.get("unpaired.folder")
            if folder and not RunFolder(Path(folder)).is_leased():
                self.client.set_terminated(child.info.run_id, "KILLED")

    def _search(self, filter_string: str) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=10_000)

    def _child(self, run: RunInfo, folder: RunFolder) -> str:
        """The MLflow run of ``run``: the one its folder records, else one a process created but could not record
        (found by its tags), else a new child of the parent."""
        link = tracking_link(folder)
        if link and link.get("tracking_uri") == self.uri:
            with contextlib.suppress(Exception):  # deleted, or from another store: look further
                self.client.update_run(link["run_id"], status="RUNNING")
                return link["run_id"]
        where = folder_tag(folder)
        found = [child for child in self._search(f"tags.`unpaired.run_id` = '{run.run_id}'") if child.data.tags.get("unpaired.folder") == where]
        child_id = found[0].info.run_id if found else self._new_child(run, folder)
        self.client.update_run(child_id, status="RUNNING")
        self.client.update_run(self.parent_run_id, status="RUNNING")  # another invocation may have ended it meanwhile
        self.client.set_tag(child_id, "mlflow.parentRunId", self.parent_run_id)  # the study's one parent, also for older children
        folder.write_tracking_link(self.uri, child_id, complete=False)
        return child_id

    def _new_child(self, run: RunInfo, folder: RunFolder) -> str:
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "unpaired.study": self.study,
            "unpaired.role": RUN_ROLE,
            "unpaired.variant": run.variant,
            "unpaired.run_id": run.run_id,
            "unpaired.variant_key": run.variant_key,
            "unpaired.seed": str(run.seed),
            "unpaired.planned_seeds": str(self.planned_seeds),
            "unpaired.status": "running",
            "unpaired.plugins": plugin_versions(),
            "unpaired.folder": folder_tag(folder),
        }
        if commit := git_commit():
            tags["unpaired.git_commit"] = commit
        child_id = self.client.create_run(self.experiment_id, run_name=f"{run.variant} seed{run.seed}", tags=tags).info.run_id
        log_spec(self.client, child_id, run.spec, folder)
        return child_id

    def _log_history(self, child_id: str, folder: RunFolder) -> set[int]:
        """Log the epochs of the folder's history that the child lacks, in order; return every epoch it has now."""
        logged = {m.step for m in self.client.get_metric_history(child_id, EPOCH_MARKER)}
        for row in folder.read_history():
            if row["epoch"] not in logged:
                log_metrics(self.client, child_id, {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
                logged.add(int(row["epoch"]))
        return logged

    @hookimpl
    def unpaired_on_run_start(self, run: Any) -> None:
        with self.guarded(run.run_id):
            folder = RunFolder(Path(run.folder))
            child_id = self._child(run, folder)
            # epochs a crash kept from MLflow are logged now, so that the history stays in epoch order; those after the
            # last checkpoint are then trained (identically) again, and not logged twice
            self.logged_epochs[run.run_id] = self._log_history(child_id, folder)
            self.children[run.run_id] = child_id

    @hookimpl
    def unpaired_on_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        if run.run_id in self.children and run.run_id not in self.lost and epoch not in self.logged_epochs[run.run_id]:
            with self.guarded(run.run_id):
                log_metrics(self.client, self.children[run.run_id], metrics, step=epoch)

    @hookimpl
    def unpaired_on_run_end(self, run: Any, result: Any) -> None:
        child_id = self.children.get(run.run_id)
        if child_id is None or run.run_id in self.lost:
            return
        folder = RunFolder(Path(run.folder))
        with self.guarded(run.run_id):
            if result.status == "finished":
                self._complete(child_id, folder)
            elif result.status == "failed":
                self.client.set_tag(child_id, "unpaired.status", "failed")
                self.client.set_tag(child_id, "unpaired.error", (result.error or "")[:5000])
                if folder.error_file.is_file():
                    self.client.log_artifact(child_id, str(folder.error_file))
                self.client.set_terminated(child_id, "FAILED")
            else:
                self.client.set_tag(child_id, "unpaired.status", result.status)
                self.client.set_terminated(child_id, "KILLED")

    def _complete(self, child_id: str, folder: RunFolder) -> None:
        """Log what a finished run left in its folder and MLflow lacks (epochs, final metrics, artifacts); close it FINISHED."""
        result = folder.read_result()
        if result is None or not result.finished:  # nothing finished to complete: it stays open for its next attempt
            return
        self._log_history(child_id, folder)
        log_metrics_once(self.client, child_id, result.metrics, step=result.epochs)
        for key, value in _result_tags(result).items():
            self.client.set_tag(child_id, f"unpaired.{key}", value)
        for path in folder.finished_files():
            self.client.log_artifact(child_id, str(path))
        if folder.samples.is_dir():
            self.client.log_artifacts(child_id, str(folder.samples), folder.samples.name)
        if self.log_generators and folder.generators.is_dir():
            self.client.log_artifacts(child_id, str(folder.generators), folder.generators.name)
        if "unpaired.error" in self.client.get_run(child_id).data.tags:  # left by an earlier failed attempt
            self.client.delete_tag(child_id, "unpaired.error")
        self.client.set_tag(child_id, "unpaired.status", "finished")
        self.client.set_terminated(child_id, "FINISHED")
        folder.write_tracking_link(self.uri, child_id, complete=True)

    @hookimpl
    def unpaired_on_study_end(self, study: StudyInfo, out: Path, summary: StudySummary) -> None:
        """Attach the study report to the parent run and close it: KILLED when a signal stopped the study,
        FAILED (with the reason) when it broke off or a run failed, else FINISHED. Name the runs whose
        tracking is incomplete."""
        incomplete = [f"{run.variant} seed {run.seed}" for run in summary.done if not tracking_complete(RunFolder(run.folder), self.uri)]
        if incomplete:
            summary.notes.append(
                f"MLflow tracking is incomplete for {', '.join(incomplete)}: once the tracking store works again (the "
                "warnings above say what failed), run the same command again, and it logs what is missing"
            )
        if self.parent_run_id is None:
            return
        with self.guarded(STUDY):
            if summary.aborted:
                self.client.set_tag(self.parent_run_id, "unpaired.error", summary.aborted[:5000])
            else:
                if (report := report_path(out)).is_file():  # written just before, by the report writer
                    self.client.log_artifact(self.parent_run_id, str(report))
            log_aggregates(self.client, self.parent_run_id, out)
            failed = summary.failed or summary.interrupted or summary.aborted
            status = "KILLED" if summary.stopped_by is not None else "FAILED" if failed else "FINISHED"
            if not close_parent(self.client, self.parent_run_id, out, status):
                summary.notes.append("the study's MLflow parent run stays RUNNING: another invocation still trains runs of it")


@hookimpl
def unpaired_study_listeners(study: StudyInfo) -> list[object]:
    """A :class:`StudyTracker` for a study whose ``tracking`` is enabled."""
    settings = TrackingConfig.model_validate(study.spec.get("tracking", {}))
    if not settings.enabled:
        return []
    return [
        StudyTracker(
            tracking_uri(settings.uri),
            study.name,
            study.source,
            study.baseline,
            len(study.seeds),
            settings.log_generators,
            settings.timeout,
        )
    ]


def _result_tags(result: RunResult) -> dict[str, str]:
    """The tags (after ``unpaired.``) that a finished run's child carries: what made its scores, so that compare never
    mixes or misranks them; which images it trained on, so that compare can tell runs that saw other data; its epochs,
    training time, and which machine trained it (where its logs are)."""
    tags: dict[str, str] = {}
    if result.scoring is not None:
        tags |= {
            "evaluation": result.scoring.identity,
            "extractor": result.scoring.extractor,
            "lower_is_better": json.dumps(result.scoring.lower_is_better, sort_keys=True),
            "test_images": json.dumps(result.scoring.test_images, sort_keys=True),
            "scoring": result.scoring.model_dump_json(),
        }
    if result.train_data:
        tags["train_data"] = json.dumps(result.train_data, sort_keys=True)
    tags |= {"epochs": str(result.epochs), "training_seconds": f"{result.seconds:.3f}"}
    return tags | ({"host": result.host} if result.host else {}) | ({"ray_node": result.ray_node} if result.ray_node else {})
