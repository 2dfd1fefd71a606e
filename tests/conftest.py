"""Shared fixtures and helpers: distributions made on the fly (plugin discovery runs through real entry-point
metadata), a real MLflow server, the CLI as a user runs it, listeners that interrupt training."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from unpaired import hookimpl
from unpaired.plugin_api.registry import Registry

REPO = Path(__file__).resolve().parents[1]
UNPAIRED = str(Path(sys.executable).with_name("unpaired"))
FID_WEIGHTS = REPO.parent / "shared" / "fid" / "weights-inception-2015-12-05-6726825d.pth"

TINY_BASE = {  # the base variant of the small studies the tests run: seconds per run
    "data": {"name": "synthetic", "size": 32, "n_train": 6, "n_test": 2},
    "generator": {"name": "resnet", "n_blocks": 1, "ngf": 4},
    "discriminator": {"name": "patchgan", "ndf": 4, "n_layers": 2},
    "train": {"epochs": 1, "decay_epochs": 1, "num_workers": 0},
    "samples": 1,
    "eval": {"metrics": []},
}


def unreadable_images(root: Path) -> dict[str, str]:
    """A folder dataset that passes validation (its four folders exist) but fails when a run opens it: its only image
    in each folder is not an image. The ``data`` spec of a variant made to fail."""
    for name in ("trainA", "trainB", "testA", "testB"):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "0.png").write_bytes(b"not a png")
    return {"name": "folder", "root": str(root)}


# A distribution whose components each break one contract of their kind.
BROKEN_COMPONENTS = """
    import torch
    from pydantic import BaseModel
    from torch import nn
    from unpaired.plugin_api import GanLoss, Norm, hookimpl
    from unpaired_plugins.synthetic import SyntheticData, SyntheticParams

    class P(BaseModel):
        pass

    class Scale(nn.Module):
        '''A 1x1 conv (so it trains), then a fixed operation that breaks a contract.'''

        def __init__(self, channels_out, after):
            super().__init__()
            self.conv, self.after = nn.Conv2d(3, channels_out, 1), after

        def forward(self, x):
            return self.after(self.conv(x))

    class CoupledNorm(Norm):
        '''Batch norm that wrongly claims to treat each image alone.'''

        has_affine_shift = True
        per_image = True

        def __init__(self, params):
            pass

        def __call__(self, channels):
            return nn.BatchNorm2d(channels)

    class FloatLoss(GanLoss):
        # LSGAN computed in Python floats: no gradient reaches the networks

        def __init__(self, params):
            pass

        def generator_loss(self, fake_pred, real_pred=None):
            return float(((fake_pred - 1) ** 2).mean())

        def discriminator_loss(self, real_pred, fake_pred):
            return float(((real_pred - 1) ** 2).mean() + (fake_pred**2).mean())

    class NoTestB(SyntheticData):
        # synthetic images, but none in the test split of domain B

        def __init__(self, params):
            super().__init__(SyntheticParams(size=32, n_train=4, n_test=2))

        def size(self, split, domain):
            return 0 if (split, domain) == ("test", "B") else super().size(split, domain)

    @hookimpl
    def unpaired_register_gan_losses(register):
        register("float_loss", FloatLoss, P, "returns floats")

    @hookimpl
    def unpaired_register_datasets(register):
        register("no_test_b", NoTestB, P, "an empty test split of B")

    @hookimpl
    def unpaired_register_generators(register):
        register("one_channel", lambda params, norm: Scale(1, torch.tanh), P, "gives 1 channel")
        register("unbounded", lambda params, norm: Scale(3, lambda y: torch.tanh(y) + 1.5), P, "gives values in [0.5, 2.5]")

    @hookimpl
    def unpaired_register_norms(register):
        register("coupled", CoupledNorm, P, "batch norm claiming per_image")
"""
# A feature extractor that scores a test study in no time.
PIXEL_FEATURES = """
    from pydantic import BaseModel
    from torch import nn
    from unpaired.plugin_api import hookimpl

    class P(BaseModel):
        pass

    class MeanColour(nn.Module):
        '''Each image's mean colour: a cheap stand-in for Inception, so that a test study is scored in no time.'''

        def forward(self, images):
            return images.float().mean(dim=(2, 3)) / 255

    @hookimpl
    def unpaired_register_feature_extractors(register):
        register("mean_colour", lambda params: MeanColour(), P, "mean colour of each image")
"""

# Every test (and every CLI it starts) uses the offline FID weights and a private feature cache.
os.environ["UNPAIRED_FID_WEIGHTS"] = str(FID_WEIGHTS)
os.environ["UNPAIRED_CACHE"] = tempfile.mkdtemp(prefix="unpaired-test-cache-")
# Tests run in parallel (pytest-xdist, README's `pytest`) share the cores: a torch spinning 2 OpenMP threads on a core that
# another test uses runs 10-20x slower. Each worker takes its share, and the commands it starts inherit it.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    import torch

    share = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(share)
    torch.set_num_threads(share)
# ... and one MLflow store for the whole session (a fresh SQLite store costs seconds of migrations).
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='unpaired-test-mlflow-')}/mlflow.db"


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_repository():
    """Tests run in a scratch working directory, so whatever MLflow or a command puts next to itself
    (./mlruns artifact folders, ./runs) stays out of the checkout; and they must never leave any there.
    (A fixture, not import-time code: pytest finds ``testpaths`` from the working directory after loading this file.)"""
    os.chdir(tempfile.mkdtemp(prefix="unpaired-test-cwd-"))
    yield
    left = [name for name in ("mlflow.db", "mlruns", "mlartifacts", "runs") if (REPO / name).exists()]
    assert not left, f"tests wrote {left} into {REPO}"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker more than there are cores, since the tests spend a good part of their time waiting on the
    commands, servers and clusters they start (on 2 cores, 3 workers ran the suite in 757 s)."""
    return (os.cpu_count() or 1) + 1


WORKER_GROUPS = {"test_ray.py": "ray", "test_report.py": "report-study"}
"""Modules whose tests run on one worker (``--dist loadgroup``): the one Ray cluster they use, the one study they read."""


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests start first, so that parallel workers do not wait on one at the end; each of the
    :data:`WORKER_GROUPS` runs on one worker."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        if group := WORKER_GROUPS.get(item.path.name):
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Stop before any test runs when ``--dist loadgroup`` lost the groups (xdist names a grouped test ``ID@GROUP``):
    then every worker starts a Ray cluster of its own and trains the report's study again (on a 2-core AMD EPYC the suite
    took 1176 s so, and 1059 s with the groups). pytest 9.2 ignores the ``item._nodeid`` that pytest-xdist 3.8 sets, so
    the groups were lost without a word."""
    lost = [test for test in ids if Path(test.split("::")[0]).name in WORKER_GROUPS and "@" not in test]
    if lost and node.config.getoption("dist") == "loadgroup":
        raise pytest.UsageError(
            f"pytest-xdist's --dist loadgroup lost its groups ({lost[0]} and {len(lost) - 1} more): this pytest and pytest-xdist "
            "do not work together; install the versions that pyproject.toml's dev extra allows (pip install -e '.[dev]')"
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(root: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` (SQLite backend and local artifacts under ``root``) on 127.0.0.1, answering; and its URI."""
    port = port or free_port()
    log = open(root / "server.log", "a")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/store.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job consumers: tracking needs none
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return server, uri
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}") from None
            time.sleep(0.3)


def stop_mlflow_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` for the whole session; yields its URI."""
    server, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield uri
    stop_mlflow_server(server)


def write_distribution(site: Path, name: str, version: str, entry_points: dict[str, str], files: dict[str, str]) -> None:
    """Write source files and a ``NAME-VERSION.dist-info`` declaring ``unpaired`` entry points into ``site`` (writing the
    same name and version again replaces its files, as reinstalling a changed package would)."""
    for relative, text in files.items():
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[unpaired]\n{lines}")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder on sys.path (and on PYTHONPATH for subprocesses) to install test distributions into."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("UNPAIRED_PLUGINS", raising=False)
    return folder


@pytest.fixture
def make_distribution(site: Path) -> Callable[..., Path]:
    """``make_distribution(name, version, entry_points, files)`` installs a tiny distribution into ``site``."""

    def make(name: str, version: str, entry_points: dict[str, str], files: dict[str, str]) -> Path:
        write_distribution(site, name, version, entry_points, files)
        return site

    return make


@pytest.fixture
def registry() -> Registry:
    """The components of every installed distribution (a fresh registry per test: tests may add plugins to it)."""
    return Registry.from_entry_points()


def write_study(path: Path, name: str, base: dict = TINY_BASE, **fields: object) -> Path:
    """A study file ``path`` named ``name`` with ``base`` (default: the tiny base) and any other top-level fields."""
    path.write_text(yaml.safe_dump({"name": name, "base": base, **fields}, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``unpaired`` console script as a user would."""
    return subprocess.run([UNPAIRED, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


class AtStep:
    """A listener that calls ``action()`` when training reaches global step ``step``."""

    def __init__(self, step: int, action: Callable[[], None]):
        self.step, self.action = step, action

    @hookimpl
    def unpaired_on_step(self, run, epoch, step, losses, lr):
        if step == self.step:
            self.action()


def send_sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def crash() -> None:
    raise RuntimeError("simulated crash")


def write_synthetic_folder(root: Path, size: int = 32, n_train: int = 4, n_test: int = 4) -> Path:
    """The synthetic dataset in the folder layout under ``root``, as ``unpaired data export synthetic`` writes it."""
    from unpaired.plugin_api.registry import default_registry
    from unpaired.tools.export import export_folder_layout

    config = {"name": "synthetic", "size": size, "n_train": n_train, "n_test": n_test}
    export_folder_layout(default_registry().build("dataset", config), root)
    return root


def _start_ray_node(ray: str, args: list[str], log: Path, env: dict[str, str], deadline: float) -> subprocess.Popen:
    node = subprocess.Popen(
        [ray, "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", "--block"],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    while "Ray runtime started" not in log.read_text():
        if node.poll() is not None or time.monotonic() > deadline:
            _stop_process_groups([node])
            raise RuntimeError(f"a ray node did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    return node


def _stop_process_groups(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is left: its workers
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster on this machine, started with `ray start` (1 CPU per node, a resource naming
    each node); yields its address. Its processes are this fixture's own process groups, stopped at the end."""
    pytest.importorskip("ray")
    root = Path(tempfile.mkdtemp(prefix="ray-"))  # short: a node's socket paths must stay under 108 bytes
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the nodes, and the drivers the tests start, of a throwaway local cluster
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "UNPAIRED_LEASE_TIMEOUT": "5"}
    ray, port, deadline = str(Path(sys.executable).with_name("ray")), free_port(), time.monotonic() + 120
    address = f"127.0.0.1:{port}"
    head = _start_ray_node(
        ray,
        ["--head", "--port", str(port), "--temp-dir", str(root / "tmp"), "--include-dashboard", "false", "--resources", '{"node_a": 1}'],
        root / "head.log",
        env,
        deadline,
    )
    nodes = [head]
    try:
        nodes.append(_start_ray_node(ray, ["--address", address, "--resources", '{"node_b": 1}'], root / "node.log", env, deadline))
        yield address
    finally:
        _stop_process_groups(list(reversed(nodes)))
        shutil.rmtree(root, ignore_errors=True)
