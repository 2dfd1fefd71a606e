"""The third-party example package in examples/ is found through its real entry-point metadata."""

from __future__ import annotations

import json
import shutil
import tomllib

import pytest
import torch

from conftest import REPO, run_cli, write_distribution
from unpaired.registry import Registry

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


def test_example_components_build_and_train(example_installed):
    registry = Registry.from_entry_points()
    instance = registry.build("norm", {"name": "instance"})
    generator = registry.build("generator", {"name": "unet", "depth": 5, "ngf": 8, "dropout": 0.5}, instance)
    discriminator = registry.build("discriminator", {"name": "sn_patchgan", "ndf": 8}, instance)
    assert generator.__class__.__module__ == "unpaired_unet.plugin"
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = generator(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    scores = discriminator(y)
    assert scores.shape == (2, 1, 2, 2)
    scores.mean().backward()
    assert all(p.grad is not None for p in generator.parameters())
