"""The Ray executor: each run of a study is one Ray task on a cluster, with the resources the study asks for.

Ray is an optional extra (``pip install 'unpaired[ray]'``). A task whose worker or node dies is
started again by Ray (``execution.max_retries``) and resumes from the run's last checkpoint. The
run folder's lease keeps one process per run whatever happens: a retry waits for a dead first
attempt's lease to go stale; two drivers, or a local and a Ray invocation, never train one run
at once. Run folders must be on storage every node sees: the executor checks that first.
"""

from __future__ import annotations

import importlib.util
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

from unpaired.errors import StopRequested, UnpairedError, UsageError
from unpaired.execution.jobs import count_line, train_job
from unpaired.plugin_api.executors import Collect, ExecutorContext, RunJob
from unpaired.signals import deferred_signals, stop_on_signals, stop_requested
from unpaired.storage.lease import TIMEOUT_ENV, heartbeat_interval, lease_timeout
from unpaired.storage.lifecycle import RunOutcome, outcome_of_exception
from unpaired.storage.run_folder import RunFolder
from unpaired.training.progress import epoch_line


class RayUnavailable(UnpairedError):
    """``--executor ray`` without Ray installed."""

    exit_code = 2


class ClusterUnusable(UnpairedError):
    """No Ray cluster answers at the address given, or none of its nodes can hold a run as the study asks."""

    exit_code = 2


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise RayUnavailable(f"the Ray executor needs Ray ({error}): pip install 'unpaired[ray]', or use the local executor") from None
    return ray


class RayExecutor:
    """A connection to a Ray cluster (``address``; None: Ray on this machine) that trains each run as a task reserving
    ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs, started again up to ``max_retries`` times when its worker or node
    dies; :attr:`machines` is how many nodes it has."""

    def __init__(self, address: str | None, cpus_per_run: float, gpus_per_run: float, max_retries: int, context: ExecutorContext):
        self.ray, self.context = _import_ray(), context
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.max_retries = max_retries
        _check_answers(address)
        try:
            connected = self.ray.init(address=address, logging_level="WARNING")
        except ConnectionError as error:
            raise ClusterUnusable(
                f"no Ray cluster answers at {address} ({error}); start one with `ray start --head`, "
                "or leave execution.address out to start Ray on this machine"
            ) from None
        self.nodes = [node for node in self.ray.nodes() if node["Alive"]]
        self.machines = len(self.nodes)
        dashboard = getattr(connected, "dashboard_url", None)
        context.announce(f"Ray: {self.machines} node(s)" + (f", dashboard http://{dashboard}" if dashboard else ""))
        self.check_fits()
        self.check_storage(context.out)
        self.silent_holders: set[str] = set()
        """Lease tokens of holders already said to be silent."""

    def check_fits(self) -> None:
        """Refuse a run request no node can meet (Ray would keep it pending for ever), naming what the largest node has."""
        cpus, gpus = self.cpus_per_run, self.gpus_per_run
        have = [(node["Resources"].get("GPU", 0.0), node["Resources"].get("CPU", 0.0)) for node in self.nodes]
        if not any(node_cpus >= cpus and node_gpus >= gpus for node_gpus, node_cpus in have):
            largest_gpus, largest_cpus = max(have, default=(0.0, 0.0))
            raise ClusterUnusable(
                f"no node of the Ray cluster has the {cpus:g} CPU and {gpus:g} GPU each run asks for "
                f"(execution.cpus_per_run, gpus_per_run); the largest has {largest_cpus:g} CPU and {largest_gpus:g} GPU. "
                "Ask for less, or join a node that has them (ray start --num-cpus/--num-gpus)"
            )

    def check_storage(self, out: Path) -> None:
        """Every node writes and reads a probe file in ``out``: the run folders must be on storage they all see."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        out.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        probe = out / f".unpaired-probe-{token}"
        probe.write_text(token)
        probe_task = self.ray.remote(num_cpus=0)(_probe)
        refs = {
            node["NodeManagerAddress"] + " " + node["NodeID"][:8]: probe_task.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(str(probe), token)
            for node in self.nodes
        }
        try:
            blind = [name for name, ref in refs.items() if not self.ray.get(ref)]
        finally:
            for path in out.glob(f".unpaired-probe-{token}*"):
                path.unlink(missing_ok=True)
        if blind:
            raise UsageError(
                f"node(s) {', '.join(blind)} cannot read and write {out}: the output folder must be on storage "
                "every node of the Ray cluster sees (a shared file system), e.g. --out /shared/runs"
            )

    def run(self, jobs: list[RunJob], collect: Collect) -> None:
        """One task per run, until all have ended. A stop signal cancels them: running ones checkpoint first.

        Progress, unless quiet: a line per epoch of each run, read from its folder as its history grows (the same line a
        worker of the local executor prints), and a line counting the runs whenever some end.
        """
        task = self.ray.remote(_train_task).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=self.max_retries, retry_exceptions=False
        )
        threads = max(1, int(self.cpus_per_run))
        pending = {task.remote(job, threads): job for job in jobs}
        epochs = _EpochLines(jobs if self.context.show_progress else [])
        say = self.context.announce
        say(f"submitted {len(jobs)} run(s) to Ray, {self.cpus_per_run:g} CPU and {self.gpus_per_run:g} GPU each")
        ended: dict[str, int] = {}
        with deferred_signals():  # a signal must not raise inside Ray's own waiting: the loop looks for it
            while pending and stop_requested() is None:
                ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    job = pending.pop(ref)
                    epochs.show_new(job)
                    outcome = self._outcome(job, ref)
                    ended[outcome.outcome] = ended.get(outcome.outcome, 0) + 1
                    collect(job, outcome)
                running = self._watch_leases(list(pending.values()))
                for job in pending.values():
                    epochs.show_new(job)
                if ready and self.context.show_progress:
                    say(count_line(len(jobs), len(pending), running, ended))
            if pending and (signum := stop_requested()) is not None:
                say(f"signal {signum}: the running runs checkpoint and stop; the queued ones are cancelled")
                for ref in pending:
                    self.ray.cancel(ref)
                for ref, job in pending.items():
                    collect(job, self._outcome(job, ref))
                raise StopRequested(signum)

    def _watch_leases(self, jobs: list[RunJob]) -> int:
        """How many of ``jobs`` a live process holds (each lease read once); and name, once each, a run whose lease holder
        has gone silent (its node died?): the retry waits for it until then."""
        running = 0
        for job in jobs:
            lease = RunFolder(job.folder).lease()
            holder, silent = lease.read_holder(), lease.silence()
            running += silent is not None and not lease.is_stale(holder)
            if holder is None or silent is None or silent < 3 * heartbeat_interval() or str(holder.get("token")) in self.silent_holders:
                continue
            self.silent_holders.add(str(holder.get("token")))
            until = time.strftime("%H:%M:%S", time.localtime(time.time() + max(0.0, lease_timeout() - silent)))
            self.context.announce(
                f"waiting: {job.label} is held by pid {holder['pid']} on {holder['host']}, silent for "
                f"{silent:.0f} s (its node died?); a retry takes it over at {until} unless it beats again "
                f"(after {lease_timeout():g} s of silence, {TIMEOUT_ENV})"
            )
        return running

    def _outcome(self, job: RunJob, ref: Any) -> RunOutcome:
        try:
            outcome: RunOutcome = self.ray.get(ref)
        except self.ray.exceptions.TaskCancelledError:  # cancelled before it started: still pending
            return RunOutcome("not-started")
        except Exception as error:  # the task failed for good (retries spent, or Ray itself failed)
            return outcome_of_exception(job.run_id, error)
        return outcome

    def close(self) -> None:
        self.ray.shutdown()


def _probe(path: str, token: str) -> bool:
    """On one node: read the driver's probe file and write one of our own beside it."""
    try:
        if Path(path).read_text() != token:
            return False
        mine = Path(f"{path}-{secrets.token_hex(4)}")
        mine.write_text(token)
        return mine.read_text() == token
    except OSError:
        return False


def _check_answers(address: str | None) -> None:
    """Within seconds, refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) where no Ray cluster answers: nothing listens, or
    something that does not speak gRPC (Ray's protocol) does. Ray itself retries for minutes, or for ever. A ``ray://``
    address is refused when Ray Client's package is missing."""
    if address is None or address == "auto":
        return
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise ClusterUnusable(
            f"{address} is a Ray Client address, and Ray Client needs its own package: pip install 'ray[client]'; or run "
            "`unpaired run` on a machine of the cluster with the head node's HOST:PORT (default port 6379)"
        )
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as connection:
            speaks_grpc = _answers_http2(connection)
    except (OSError, ValueError) as error:
        raise ClusterUnusable(
            f"no Ray cluster answers at {address} ({getattr(error, 'strerror', None) or error}): give the head "
            "node's HOST:PORT as `ray start --head` printed it (default port 6379), or ray://HOST:10001 with pip install 'ray[client]'"
        ) from None
    if not speaks_grpc:
        raise ClusterUnusable(
            f"something listens at {address}, but it is not a Ray cluster (it does not answer in gRPC, Ray's protocol, "
            "within 5 s): give the head node's HOST:PORT as `ray start --head` printed it (default port 6379)"
        )


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
"""What an HTTP/2 client sends first: the connection preface, then an empty SETTINGS frame (RFC 9113, 3.4)."""


def _answers_http2(connection: socket.socket) -> bool:
    """Whether the server on ``connection`` answers the HTTP/2 preface with its SETTINGS frame, as every gRPC server (a
    Ray head's GCS, a Ray Client server) does; a silent or other server does not, within the connection's timeout."""
    try:
        connection.sendall(HTTP2_PREFACE)
        header = b""
        while len(header) < 9:
            chunk = connection.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:
        return False
    return header[3] == 4  # frame type 4: SETTINGS


class _EpochLines:
    """The line per epoch of runs trained elsewhere (:func:`unpaired.training.progress.epoch_line`), printed here from
    their folders' histories as they grow: Ray forwards a task's own output late, folds like lines of different tasks
    into one ("[repeated 3x across cluster]") and drops what is left when the driver exits. Epochs already in a history
    when the study starts (a resumed run's) are not shown again."""

    def __init__(self, jobs: list[RunJob]):
        self.followed = {job.run_id: (self._stamp(job), self._last_epoch(job)) for job in jobs}

    def show_new(self, job: RunJob) -> None:
        """Print the epochs of ``job`` recorded since last asked (nothing for a job not followed)."""
        if job.run_id not in self.followed or (stamp := self._stamp(job)) == self.followed[job.run_id][0]:
            return
        rows = RunFolder(job.folder).history_so_far()
        shown = self.followed[job.run_id][1]
        shown = 0 if rows and rows[-1]["epoch"] < shown else shown  # started again from scratch
        train = job.spec["train"]
        for row in rows:
            if row["epoch"] > shown:
                print(epoch_line(job.label, row, train["epochs"] + train["decay_epochs"]), file=sys.stderr, flush=True)
        self.followed[job.run_id] = (stamp, max([shown, *(int(row["epoch"]) for row in rows)]))

    @staticmethod
    def _stamp(job: RunJob) -> tuple[int, int] | None:
        try:
            found = RunFolder(job.folder).history_file.stat()
        except OSError:
            return None
        return found.st_mtime_ns, found.st_size

    @staticmethod
    def _last_epoch(job: RunJob) -> int:
        return max([0, *(int(row["epoch"]) for row in RunFolder(job.folder).history_so_far())])


def _train_task(job: RunJob, threads: int) -> RunOutcome:
    """A Ray task: train one job in this worker (see :func:`train_job`). A cancel (SIGINT) makes the run checkpoint and
    stop; a retry after a dead attempt waits up to 1.5 lease timeouts for that attempt's lease to go stale."""
    node = _import_ray().get_runtime_context().get_node_id()
    with stop_on_signals():
        return train_job(job, threads=threads, lease_wait=1.5 * job.lease_timeout, ray_node=node)
