"""The third-party example package in examples/ is found through its real entry-point metadata."""

from __future__ import annotations

import json
import shutil
import tomllib

import pytest
import yaml
import torch

from conftest import BROKEN_COMPONENTS, PIXEL_FEATURES, REPO, TINY_BASE, run_cli, write_distribution, write_study
from unpaired.config.resolved import resolve_variant
from unpaired.plugin_api.registry import Registry
from unpaired.storage.run_folder import RunFolder
from unpaired.tools.translate import load_generator
from unpaired.training.parts import build_method
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

    spec = {
        "data": {"name": "synthetic", "size": 32, "n_train": 4, "n_test": 2},
        "generator": {"name": "unet", "depth": 5, "ngf": 8},
        "discriminator": {"name": "sn_patchgan", "ndf": 8, "n_layers": 2},
        "train": {"epochs": 2, "decay_epochs": 0, "num_workers": 0, "log_every": 1},
        "samples": 1,
        "eval": {"metrics": []},
    }
    variant = resolve_variant(spec, registry)
    result = train_run(variant, RunFolder(tmp_path), registry, show_progress=False).result
    assert result.status == "finished" and result.steps == 8, result.error
    history = RunFolder(tmp_path).read_history()
    assert [row["epoch"] for row in history] == [1, 2] and all(0 < row["cycle_A"] < 100 for row in history)
    trained, crop, _ = load_generator(RunFolder(tmp_path).generator_path("AtoB"), "AtoB", registry)
    assert trained.__class__.__module__ == "unpaired_unet.plugin" and crop == 32
    torch.manual_seed(0)
    initial = build_method(variant, torch.device("cpu"), 32).networks["G_AB"].state_dict()  # the same seed's starting weights
    changed = [key for key, value in trained.state_dict().items() if value.is_floating_point() and not torch.equal(value, initial[key])]
    assert changed, "training did not change the U-Net's weights"


def test_the_example_package_s_own_tests_check_its_components_with_unpaired_testing(example_installed):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"generator": {"name": "one_channel"}},
            "generator 'one_channel' of broken-parts 1.0 must map images (N, 3, H, W) to the same shape; "
            "it turned (2, 3, 32, 32) into (2, 1, 32, 32)",
        ),
        ({"generator": {"name": "unbounded"}}, "generator 'unbounded' of broken-parts 1.0 must give images in [-1, 1]"),
        ({"norm": {"name": "coupled"}}, "norm 'coupled' of broken-parts 1.0 claims per_image = True, but the generator networks it normalises"),
        (
            {"gan_loss": {"name": "float_loss"}},
            "gan_loss 'float_loss' of broken-parts 1.0: generator_loss must return a finite scalar tensor computed "
            "from the scores it is given (with torch operations, so that gradients flow); it returned a float",
        ),
        (
            {"data": {"name": "no_test_b"}},
            "dataset 'no_test_b' of broken-parts 1.0 has no images in testB: every split of both domains needs at least one",
        ),
    ],
)
def test_a_component_breaking_its_contract_is_named_before_any_training_step(make_distribution, tmp_path, changes, message):
    """Each would otherwise fail deep in training (a dataset with an empty split: after a whole epoch), naming neither."""
    make_distribution("broken-parts", "1.0", {"broken": "broken_parts"}, {"broken_parts.py": BROKEN_COMPONENTS})
    registry = Registry.from_entry_points()
    spec = {
        "data": {"name": "synthetic", "size": 32, "n_train": 4, "n_test": 2},
        "generator": {"name": "resnet", "n_blocks": 1, "ngf": 4},
        "discriminator": {"name": "patchgan", "ndf": 4, "n_layers": 2},
        "train": {"epochs": 1, "decay_epochs": 0, "num_workers": 0},
        "samples": 1,
        "eval": {"metrics": []},
        **changes,
    }
    result = train_run(resolve_variant(spec, registry), RunFolder(tmp_path), registry, show_progress=False).result
    assert result.status == "failed" and result.error.startswith("ContractError: ") and message in result.error, result.error
    assert RunFolder(tmp_path).latest_checkpoint() is None and not (tmp_path / "history.json").exists()


KEPT_WEIGHTS = """
    import torch
    from pydantic import BaseModel
    from torch import nn
    from unpaired.plugin_api import hookimpl

    class P(BaseModel):
        keep: bool = True

    class Pretrained(nn.Module):
        '''A "pretrained" 1x1 conv of weights 0.5 that asks not to be re-initialised, and a fresh head that is.'''

        def __init__(self, keep):
            super().__init__()
            self.backbone = nn.Conv2d(3, 3, 1)
            nn.init.constant_(self.backbone.weight, 0.5)
            self.backbone.keep_initial_weights = keep
            self.head = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return torch.tanh(self.head(self.backbone(x)))

    @hookimpl
    def unpaired_register_generators(register):
        register("pretrained", lambda params, norm: Pretrained(params.keep), P, "keeps its backbone's weights")
"""


def test_a_plugin_network_part_can_keep_its_initial_weights(make_distribution):
    from unpaired.training.parts import build_method

    make_distribution("kept-weights", "1.0", {"kept": "kept_weights"}, {"kept_weights.py": KEPT_WEIGHTS})
    registry = Registry.from_entry_points()
    for keep in (True, False):
        spec = {"data": {"name": "synthetic", "size": 32}, "generator": {"name": "pretrained", "keep": keep}}
        torch.manual_seed(0)
        generator = build_method(resolve_variant(spec, registry), torch.device("cpu"), 32).networks["G_AB"]
        assert torch.equal(generator.backbone.weight, torch.full_like(generator.backbone.weight, 0.5)) == keep
        assert generator.head.weight.abs().max() < 0.1 and (generator.head.bias == 0).all()  # N(0, 0.02), not PyTorch's init


ACME_GENERATOR = """
    import torch
    from pydantic import BaseModel
    from torch import nn
    from unpaired.plugin_api import hookimpl

    class P(BaseModel):
        width: int = 4

    def build(params, norm):
        return nn.Sequential(nn.Conv2d(3, params.width, 3, padding=1), nn.ReLU(), nn.Conv2d(params.width, 3, 3, padding=1), nn.Tanh())

    @hookimpl
    def unpaired_register_generators(register):
        register("acme", build, P, "a two-layer generator")
"""


@pytest.mark.slow
def test_a_run_trained_by_another_plugin_version_is_marked_stale_and_can_be_trained_again(make_distribution, site, tmp_path):
    make_distribution("acme-gen", "1.0", {"acme": "acme_gen"}, {"acme_gen.py": ACME_GENERATOR})
    study = tmp_path / "acme.yaml"
    study.write_text(yaml.safe_dump({"name": "acme", "base": {**TINY_BASE, "generator": {"name": "acme"}}, "tracking": {"enabled": False}}))
    out = ["--out", str(tmp_path / "out")]
    assert run_cli("run", str(study), *out, "--quiet").returncode == 0
    (folder,) = [p.parent for p in (tmp_path / "out").glob("*/*/result.json")]
    assert json.loads((folder / "result.json").read_text())["plugins"] == {"acme-gen": "1.0", "unpaired": "0.2.0"}

    (site / "acme_gen-1.0.dist-info").rename(site / "acme_gen-1.1.dist-info")  # the plugin is upgraded
    (site / "acme_gen-1.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-gen\nVersion: 1.1\n")
    plan = run_cli("plan", str(study), *out).stdout
    assert plan.splitlines()[1].split()[2:5] == [folder.name.split("-")[1], "12", "stale"]  # same run id, now stale
    assert "stale (acme-gen 1.0 -> 1.1)" in plan.splitlines()[1]  # which plugin changed decides whether to retrain
    again = run_cli("run", str(study), *out, "--quiet")
    assert "skipped 1" in again.stdout and "trained by other versions of their plugins" in again.stdout
    rerun = run_cli("run", str(study), *out, "--quiet", "--rerun-stale")
    assert rerun.returncode == 0 and "done 1" in rerun.stdout, rerun.stderr
    assert json.loads((folder / "result.json").read_text())["plugins"]["acme-gen"] == "1.1"
    assert folder.with_name(f"{folder.name}.old-1").is_dir()
    assert run_cli("plan", str(study), *out).stdout.splitlines()[1].split()[4] == "done"


@pytest.mark.slow
def test_a_new_version_of_a_plugin_that_only_scores_rescores_the_runs_and_trains_nothing(make_distribution, site, tmp_path):
    """A metric or feature-extractor package's new version made every run stale, and --rerun-stale retrained them all."""
    make_distribution("pixel-features", "1.0", {"pixel": "pixel_features"}, {"pixel_features.py": PIXEL_FEATURES})
    base = {**TINY_BASE, "eval": {"metrics": ["fid"], "feature_extractor": {"name": "mean_colour"}}}
    study = write_study(tmp_path / "pixel.yaml", "pixel", base, tracking={"enabled": False})
    out = ["--out", str(tmp_path / "out")]
    assert run_cli("run", str(study), *out, "--quiet").returncode == 0
    (folder,) = [p.parent for p in (tmp_path / "out").glob("*/*/result.json")]
    trained = {name: (folder / name).read_bytes() for name in ("history.csv", "history.json", "generators/AtoB.pt")}
    scored = json.loads((folder / "result.json").read_text())

    (site / "pixel_features-1.0.dist-info").rename(site / "pixel_features-1.1.dist-info")  # the plugin is upgraded
    (site / "pixel_features-1.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: pixel-features\nVersion: 1.1\n")
    assert run_cli("plan", str(study), *out).stdout.splitlines()[1].split()[2:5] == [scored["run_id"], "12", "rescore"]
    again = run_cli("run", str(study), *out, "--quiet")
    assert again.returncode == 0 and "done 1 (1 of them scored again, not trained)" in again.stdout, again.stdout + again.stderr
    assert {name: (folder / name).read_bytes() for name in trained} == trained  # not trained again
    result = json.loads((folder / "result.json").read_text())
    assert result["plugins"]["pixel-features"] == "1.1" and result["metrics"] == scored["metrics"]
    assert result["scoring"]["identity"] != scored["scoring"]["identity"]
    assert run_cli("plan", str(study), *out).stdout.splitlines()[1].split()[4] == "done"
