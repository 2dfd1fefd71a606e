"""The Ray executor on a real two-node cluster on this machine: same results as locally, retries, leases, refusals."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import TINY_BASE, UNPAIRED, free_port, run_cli, write_study
from unpaired.config.study import load_study
from unpaired.plugin_api.registry import Registry
from unpaired.storage.run_folder import RunFolder

pytest.importorskip("ray")
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LONGER = {**TINY_BASE, "data": {**TINY_BASE["data"], "n_train": 120}, "train": {**TINY_BASE["train"], "epochs": 3, "decay_epochs": 0}}


def one_thread(**env: str) -> dict[str, str]:
    """The environment of a local run comparable with Ray's tasks (1 CPU each: one torch thread)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **env}


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([UNPAIRED, *args], capture_output=True, text=True, env=env, timeout=600)


def assert_same_runs(first: Path, second: Path) -> list[dict]:
    """Every run of two outputs of one study: identical final weights and loss histories."""
    index = json.loads((first / "study.json").read_text())["runs"]
    for entry in index:
        a, b = (
            torch.load(next((out / entry["folder"] / "checkpoints").glob("*.pt")), weights_only=True)["model"]["networks"] for out in (first, second)
        )
        assert all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n]), entry["folder"]
        rows = [
            [
                {k: v for k, v in r.items() if k not in ("epoch_seconds", "it_per_s")}
                for r in json.loads((out / entry["folder"] / "history.json").read_text())
            ]
            for out in (first, second)
        ]
        assert rows[0] == rows[1], entry["folder"]
    return index


def children(uri: str, study: str, out: Path) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study).experiment_id
    found = client.search_runs([experiment], filter_string="tags.`unpaired.role` = 'run'")
    return [c for c in found if c.data.tags["unpaired.folder"].startswith(str(out))]


def test_a_study_on_a_two_node_cluster_equals_the_local_executor(ray_cluster, mlflow_server, tmp_path):
    study = write_study(tmp_path / "cluster.yaml", "cluster", grid={"generator.n_blocks": [1, 2]}, seeds=[0, 1])
    env = one_thread(MLFLOW_TRACKING_URI=mlflow_server)
    local = run("run", str(study), "--out", str(tmp_path / "local"), "--quiet", "--jobs", "2", env=env)
    assert local.returncode == 0, local.stderr
    started = time.monotonic()
    on_ray = run("run", str(study), "--out", str(tmp_path / "ray"), "--executor", "ray", "--address", ray_cluster, env=env)
    assert on_ray.returncode == 0, on_ray.stderr
    assert "Ray: 2 node(s)" in on_ray.stderr and "done 4, failed 0, skipped 0" in on_ray.stdout
    # progress: each run's line per epoch, once, in order, read from its folder (Ray's own forwarding of the tasks' output
    # came late, folded like lines of different tasks into one and dropped the last ones), and the runs counted
    epoch_lines = re.findall(r"^(n_blocks=\d seed \d): epoch (\d)/2, [\d.]+ it/s, \d+ s left; lr=", on_ray.stderr, re.MULTILINE)
    assert sorted(epoch_lines) == [(f"n_blocks={b} seed {s}", e) for b in (1, 2) for s in (0, 1) for e in "12"], on_ray.stderr
    assert "runs: 4/4 ended (4 trained, 0 failed), 0 running, 0 waiting" in on_ray.stderr and "\r" not in on_ray.stderr
    print(f"4 runs on Ray: {time.monotonic() - started:.1f} s")
    index = assert_same_runs(tmp_path / "local", tmp_path / "ray")
    mlflow_children = children(mlflow_server, "cluster", tmp_path / "ray")
    assert sorted(c.data.tags["unpaired.run_id"] for c in mlflow_children) == sorted(r["run_id"] for r in index)
    assert {c.info.status for c in mlflow_children} == {"FINISHED"}
    again = run("run", str(study), "--out", str(tmp_path / "ray"), "--quiet", "--executor", "ray", "--address", ray_cluster, env=env)
    assert "done 0, failed 0, skipped 4" in again.stdout  # finished runs are never resubmitted
    results = [json.loads(path.read_text()) for path in (tmp_path / "ray").glob("*/*/result.json")]
    assert {r["host"] for r in results} == {socket.gethostname()} and all(len(r["ray_node"]) > 20 for r in results)  # who trained it
    assert {c.data.tags["unpaired.ray_node"] for c in mlflow_children} == {r["ray_node"] for r in results}


def test_a_worker_killed_mid_run_is_retried_and_resumes_to_the_same_result(ray_cluster, mlflow_server, tmp_path):
    study = write_study(tmp_path / "retried.yaml", "retried", base=LONGER)
    env = one_thread(MLFLOW_TRACKING_URI=mlflow_server)
    process = subprocess.Popen(
        [UNPAIRED, "run", str(study), "--out", str(tmp_path / "ray"), "--quiet", "--executor", "ray", "--address", ray_cluster],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not list((tmp_path / "ray").glob("*/*/history.json")) and time.monotonic() < deadline:  # into epoch 2
        time.sleep(0.1)
    (lease,) = (tmp_path / "ray").glob("*/*/lease.json")
    os.kill(json.loads(lease.read_text())["pid"], signal.SIGKILL)  # the Ray worker training the run
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0 and "done 1, failed 0" in stdout, stderr
    local = run("run", str(study), "--out", str(tmp_path / "local"), "--quiet", env=env)
    assert local.returncode == 0, local.stderr
    assert_same_runs(tmp_path / "local", tmp_path / "ray")
    (child,) = children(mlflow_server, "retried", tmp_path / "ray")
    assert child.info.status == "FINISHED"
    assert [m.step for m in MlflowClient(mlflow_server).get_metric_history(child.info.run_id, "cycle_A")] == [1, 2, 3]


def test_a_ray_driver_and_a_local_one_at_once_train_each_run_once(ray_cluster, mlflow_server, tmp_path):
    study = write_study(tmp_path / "shared.yaml", "shared", grid={"generator.n_blocks": [1, 2, 3]})
    env = one_thread(MLFLOW_TRACKING_URI=mlflow_server)
    out = str(tmp_path / "out")
    drivers = [
        subprocess.Popen(
            [UNPAIRED, "run", str(study), "--out", out, "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for extra in (["--executor", "ray", "--address", ray_cluster], ["--jobs", "2"])
    ]
    outputs = [driver.communicate(timeout=600) for driver in drivers]
    assert [driver.returncode for driver in drivers] == [0, 0], outputs
    done = [int(stdout.split("done ")[1].split(",")[0]) for stdout, _ in outputs]
    assert sum(done) == 3, outputs
    mlflow_children = children(mlflow_server, "shared", tmp_path / "out")
    assert len(mlflow_children) == 3 and {c.info.status for c in mlflow_children} == {"FINISHED"}
    for child in mlflow_children:
        assert [m.step for m in MlflowClient(mlflow_server).get_metric_history(child.info.run_id, "cycle_A")] == [1, 2]


def test_what_ray_cannot_do_is_refused_at_once_naming_what_to_do(ray_cluster, tmp_path):
    """A SQLite store on several machines, Ray missing, an address nothing answers at, a run no node can hold."""
    study = write_study(tmp_path / "refused.yaml", "refused")
    refused = run(
        "run",
        str(study),
        "--out",
        str(tmp_path / "out"),
        "--executor",
        "ray",
        "--address",
        ray_cluster,
        env=one_thread(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db"),
    )
    assert refused.returncode == 1 and "cannot be written safely from the 2 machines of this cluster" in refused.stderr
    assert "mlflow server" in refused.stderr and not list((tmp_path / "out").glob("*/*"))

    (tmp_path / "site" / "ray").mkdir(parents=True)
    (tmp_path / "site" / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    missing = run("run", str(study), "--out", str(tmp_path / "out"), "--executor", "ray", env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert missing.returncode == 2 and "pip install 'unpaired[ray]'" in missing.stderr
    assert not list((tmp_path / "out").glob("*/*"))
    assert run_cli("run", str(study), "--address", ray_cluster).returncode == 1  # an address needs the Ray executor

    started = time.monotonic()
    env = one_thread()
    nobody = run("run", str(study), "--out", str(tmp_path / "out"), "--executor", "ray", "--address", f"127.0.0.1:{free_port()}", env=env)
    assert nobody.returncode == 2 and "no Ray cluster answers at 127.0.0.1:" in nobody.stderr, nobody.stderr
    assert time.monotonic() - started < 30  # Ray itself waits for minutes
    with socket.create_server(("127.0.0.1", 0)) as silent:  # a program that is not Ray: accepts, never answers
        started, port = time.monotonic(), silent.getsockname()[1]
        other = run("run", str(study), "--out", str(tmp_path / "out"), "--executor", "ray", "--address", f"127.0.0.1:{port}", env=env)
    assert other.returncode == 2 and f"something listens at 127.0.0.1:{port}, but it is not a Ray cluster" in other.stderr, other.stderr
    assert time.monotonic() - started < 30, "Ray itself retries for ever"
    if importlib.util.find_spec("grpc") is None:
        client = run("run", str(study), "--out", str(tmp_path / "out"), "--executor", "ray", "--address", "ray://127.0.0.1:10001", env=env)
        assert client.returncode == 2 and "Ray Client needs its own package: pip install 'ray[client]'" in client.stderr, client.stderr
    too_big = write_study(tmp_path / "big.yaml", "big", execution={"cpus_per_run": 2}, tracking={"enabled": False})
    refused = run("run", str(too_big), "--out", str(tmp_path / "out"), "--executor", "ray", "--address", ray_cluster, env=env)
    assert refused.returncode == 2, refused.stderr  # Ray would keep the task pending for ever
    assert "no node of the Ray cluster has the 2 CPU and 0 GPU each run asks for" in refused.stderr
    assert "the largest has 1 CPU and 0 GPU" in refused.stderr and not list((tmp_path / "out").glob("*/*"))


def test_the_tasks_use_the_drivers_lease_timeout_to_take_over_a_lease_a_dead_host_left(ray_cluster, tmp_path):
    """The nodes' environment says 5 s; the driver's 2 s is what every task must use, or it gives up on the lease as busy."""
    study = write_study(tmp_path / "orphan.yaml", "orphan", tracking={"enabled": False})
    env = one_thread(UNPAIRED_LEASE_TIMEOUT="2")
    (planned,) = load_study(study, Registry.from_entry_points()).runs
    lease = RunFolder.in_study(tmp_path / "out", planned.variant, 0, planned.run_id).lease().path
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({"host": "dead-host", "pid": 1, "token": "gone", "since": 0}))
    beating = threading.Event()  # the dead host's heartbeat goes on until the run is submitted, then stops

    def beat():
        while not beating.wait(0.2):
            os.utime(lease)

    threading.Thread(target=beat, daemon=True).start()
    driver = subprocess.Popen(
        [UNPAIRED, "run", str(study), "--out", str(tmp_path / "out"), "--quiet", "--executor", "ray", "--address", ray_cluster],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines = []
    for line in driver.stdout:
        lines.append(line)
        if line.startswith("submitted"):
            beating.set()
    beating.set()
    assert driver.wait(timeout=300) == 0 and "done 1, failed 0" in "".join(lines), "".join(lines)


def test_ctrl_c_cancels_the_ray_tasks_which_checkpoint_and_a_rerun_resumes_them(ray_cluster, mlflow_server, tmp_path):
    study = write_study(tmp_path / "cancelled.yaml", "cancelled", base=LONGER, grid={"generator.n_blocks": [1, 2, 3]})
    env = one_thread(MLFLOW_TRACKING_URI=mlflow_server)
    command = [UNPAIRED, "run", str(study), "--out", str(tmp_path / "out"), "--quiet", "--executor", "ray", "--address", ray_cluster]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "out").glob("*/*/history.json"))) < 2 and time.monotonic() < deadline:  # both nodes into epoch 2
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130 and "Traceback" not in stderr, stderr
    assert "interrupted 2" in stdout and "stopped by signal 2" in stdout
    started = [RunFolder(p.parent.parent) for p in (tmp_path / "out").glob("*/*/checkpoints/*.pt")]
    assert len(started) == 2 and all(folder.load_checkpoint().state.step_in_epoch > 0 for folder in started)
    assert not list((tmp_path / "out").glob("*/*/lease.json"))
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0 and "done 3, failed 0" in rerun.stdout, rerun.stderr
