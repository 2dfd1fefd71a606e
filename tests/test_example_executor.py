"""The example executor in examples/unpaired-launcher, found through its real entry-point metadata: a third-party
executor that starts each run as a process through a launcher command, written only against the plugin contract."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import tomllib

import pytest

from conftest import REPO, TINY_BASE, UNPAIRED, run_cli, write_distribution, write_study
from unpaired.storage.run_folder import RunFolder

EXAMPLE = REPO / "examples" / "unpaired-launcher"
LOGGING_LAUNCHER = """#!/bin/sh
# a launcher as srun would be one: run the rest of the command line, here logging that it did
echo "$$ $*" >> "$(dirname "$0")/launched.log"
exec "$@"
"""

pytestmark = pytest.mark.slow


@pytest.fixture
def launcher_installed(site):
    """The example as pip would lay it out: its package and a dist-info built from its own pyproject.toml."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    shutil.copytree(EXAMPLE / "unpaired_launcher", site / "unpaired_launcher")
    write_distribution(site, project["name"], project["version"], project["entry-points"]["unpaired"], {})
    launcher = site / "launch.sh"
    launcher.write_text(LOGGING_LAUNCHER)
    launcher.chmod(0o755)
    return launcher


def run_folders(out):
    return [RunFolder(path.parent) for path in sorted(out.glob("*/*/result.json"))]


def test_the_example_executor_is_listed_and_trains_every_run_through_its_launcher(launcher_installed, tmp_path):
    listing = json.loads(run_cli("plugins", "--json").stdout)
    (launcher,) = [c for c in listing["components"] if c["kind"] == "executor" and c["name"] == "launcher"]
    assert launcher["distribution"] == "unpaired-launcher" and set(launcher["parameters"]) == {"launcher", "parallel", "machines"}

    study = write_study(
        tmp_path / "launched.yaml",
        "launched",
        grid={"generator.n_blocks": [1, 2]},
        tracking={"enabled": False},
        execution={"executor": "launcher", "launcher": f"sh {launcher_installed}"},
    )
    result = run_cli("run", str(study), "--out", str(tmp_path / "out"), "--quiet", "--parallel", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("done 2, failed 0"), result.stdout
    launched = (launcher_installed.parent / "launched.log").read_text().splitlines()
    assert len(launched) == 2 and all(" -m unpaired.execution.worker " in line for line in launched)
    folders = run_folders(tmp_path / "out")
    assert [folder.read_result().status for folder in folders] == ["finished", "finished"]
    assert not list((tmp_path / "out" / ".launcher").iterdir())  # job files and outcomes are cleaned up

    again = run_cli("run", str(study), "--out", str(tmp_path / "out"), "--quiet")
    assert again.returncode == 0 and again.stdout.startswith("done 0, failed 0, skipped 2"), again.stdout
    assert len((launcher_installed.parent / "launched.log").read_text().splitlines()) == 2  # nothing launched again


def test_without_a_launcher_the_parallel_runs_share_this_machines_cores(launcher_installed, tmp_path):
    study = write_study(tmp_path / "here.yaml", "here", seeds=[0, 1], tracking={"enabled": False}, execution={"executor": "launcher", "parallel": 2})
    environment = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}  # as a user's shell has it
    command = [UNPAIRED, "run", str(study), "--out", str(tmp_path / "out"), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0 and result.stdout.startswith("done 2, failed 0"), result.stdout + result.stderr
    assert [folder.read_result().threads for folder in run_folders(tmp_path / "out")] == [max(1, (os.cpu_count() or 1) // 2)] * 2


def test_a_worker_that_dies_is_a_failed_run_naming_its_exit_status(launcher_installed, tmp_path):
    dying = launcher_installed.with_name("die.sh")
    dying.write_text("#!/bin/sh\nkill -9 $$\n")
    study = write_study(tmp_path / "dies.yaml", "dies", tracking={"enabled": False}, execution={"executor": "launcher", "launcher": f"sh {dying}"})
    result = run_cli("run", str(study), "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 1
    assert "FAILED base seed 0: RuntimeError: its worker exited with status -9 before recording how the run ended" in result.stdout


def test_a_stop_signal_reaches_the_launched_workers_which_checkpoint_and_resume(launcher_installed, tmp_path):
    study = write_study(
        tmp_path / "stopped.yaml",
        "stopped",
        tracking={"enabled": False},
        base={**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 30, "decay_epochs": 0}},
        execution={"executor": "launcher", "launcher": f"sh {launcher_installed}"},
    )
    out = tmp_path / "out"
    driver = subprocess.Popen(
        [UNPAIRED, "run", str(study), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("*/*/checkpoints/*.pt")) and time.monotonic() < deadline:  # the first epoch's checkpoint
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "interrupted 1" in stdout and "stopped by signal 2" in stdout, stdout
    (folder,) = [RunFolder(path.parent) for path in out.glob("*/*/spec.json")]
    assert folder.read_result() is None and folder.latest_checkpoint() is not None

    resumed = run_cli("run", str(study), "--out", str(out), "--quiet")
    assert resumed.returncode == 0 and resumed.stdout.startswith("done 1"), resumed.stdout
    assert folder.read_result().status == "finished"
