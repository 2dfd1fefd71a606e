"""The third-party example package in examples/ is found through its real entry-point metadata."""

from __future__ import annotations

import json
import shutil
import tomllib

import pytest
import torch

from conftest import REPO, run_cli, write_distribution
from unpaired.config.resolved import resolve_variant
from unpaired.plugin_api.registry import Registry
from unpaired.results.run_folder import RunFolder
from unpaired.tools.translate import load_generator
from unpaired.training.parts import build_model
from unpaired.training.run import train_run

EXAMPLE = REPO / "examples" / "unpaired-unet"


@pytest.fixture
def example_installed(site):
    """The example as pip would lay it out: its package and a dist-info built from its own pyproject.toml."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    shutil.copytree(EXAMPLE / "unpaired_unet", site / "unpaired_unet")
    write_distribution(site, project["name"], project["version"], project["entry-points"]["unpaired"], {})
    return site


def test_example_components_are_discovered_and_listed(example_installed):
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = {(c["kind"], c["name"]): c for c in json.loads(result.stdout)["components"]}
    assert listing["generator", "unet"]["distribution"] == "unpaired-unet"
    assert listing["generator", "unet"]["version"] == "0.1.0"
    assert listing["discriminator", "sn_patchgan"]["parameters"]["n_layers"]["default"] == 3
    assert ("generator", "resnet") in listing  # the built-ins are still there


def test_example_components_build_and_train(example_installed, tmp_path):
    registry = Registry.from_entry_points()
    instance = registry.build("norm", {"name": "instance"})
    generator = registry.build("generator", {"name": "unet", "depth": 5, "ngf": 8, "dropout": 0.5}, instance)
    discriminator = registry.build("discriminator", {"name": "sn_patchgan", "ndf": 8}, instance)
    assert generator.__class__.__module__ == "unpaired_unet.plugin"
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = generator(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    assert discriminator(y).shape == (2, 1, 2, 2)

    spec = {"data": {"name": "synthetic", "size": 32, "n_train": 4, "n_test": 2},
            "generator": {"name": "unet", "depth": 5, "ngf": 8}, "discriminator": {"name": "sn_patchgan", "ndf": 8, "n_layers": 2},
            "train": {"epochs": 2, "decay_epochs": 0, "num_workers": 0, "log_every": 1}, "samples": 1, "eval": {"fid": False}}
    variant = resolve_variant(spec, registry)
    result = train_run(variant, RunFolder(tmp_path), registry, show_progress=False)
    assert result.status == "finished" and result.steps == 8, result.error
    history = RunFolder(tmp_path).read_history()
    assert [row["epoch"] for row in history] == [1, 2] and all(0 < row["cycle_A"] < 100 for row in history)
    trained, crop = load_generator(RunFolder(tmp_path).generator_path("AtoB"), "AtoB", registry)
    assert trained.__class__.__module__ == "unpaired_unet.plugin" and crop == 32
    torch.manual_seed(0)
    initial = build_model(variant, torch.device("cpu")).networks["G_AB"].state_dict()  # the same seed's starting weights
    changed = [key for key, value in trained.state_dict().items() if value.is_floating_point() and not torch.equal(value, initial[key])]
    assert changed, "training did not change the U-Net's weights"
