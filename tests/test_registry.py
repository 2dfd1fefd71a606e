"""The registry: discovery through entry points, lookups, and errors that say what to do."""

from __future__ import annotations

import json
import pickle

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from conftest import run_cli
from unpaired.errors import pydantic_problems
from unpaired.plugin_api.registry import (
    ComponentConflictError,
    InvalidParamsError,
    Registry,
    UnknownComponentError,
    default_registry,
)

BUILTINS = {
    "method": {"cyclegan", "cut", "fastcut"},
    "generator": {"resnet"},
    "discriminator": {"patchgan", "pooled"},
    "norm": {"instance", "batch", "none"},
    "gan_loss": {"lsgan", "vanilla", "hinge", "wgangp", "ralsgan"},
    "image_pool": {"history", "none"},
    "loss_weights": {"constant", "identity_decay"},
    "dataset": {"folder", "synthetic"},
    "feature_extractor": {"inception"},
    "metric": {"fid", "kid"},
    "executor": {"local", "ray"},
}

PLUGIN_WITH_RESNET = """
    from pydantic import BaseModel
    from torch import nn
    from unpaired import hookimpl

    class P(BaseModel):
        width: int = 4

    @hookimpl
    def unpaired_register_generators(register):
        register("resnet", lambda params, norm: nn.Identity(), P, "a second resnet")
        register("tiny", lambda params, norm: nn.Identity(), P, "identity generator")
"""


def test_builtins_are_discovered_through_entry_points_of_the_unpaired_distribution(site):
    registry = Registry.from_entry_points()
    assert registry.problems == []
    for kind, names in BUILTINS.items():
        assert set(registry.names(kind)) >= names
        for name in names:
            component = registry.get(kind, name)
            assert (component.distribution, component.version) == ("unpaired", "0.2.0")
            assert component.description


def test_unknown_component_lists_what_exists_and_suggests_the_closest():
    registry = Registry.from_entry_points()
    with pytest.raises(UnknownComponentError) as error:
        registry.get("discriminator", "patchgn")
    message = str(error.value)
    assert "unknown discriminator 'patchgn'" in message
    assert "Did you mean 'patchgan'?" in message
    assert "Available: patchgan, pooled" in message


def test_invalid_params_name_the_dotted_path_and_the_bad_value():
    registry = Registry.from_entry_points()
    with pytest.raises(InvalidParamsError) as error:
        registry.resolve("generator", {"name": "resnet", "n_blocks": "nine", "ngf": 0}, where="base.generator")
    assert dict(error.value.errors).keys() == {"base.generator.n_blocks", "base.generator.ngf"}
    assert "got 'nine'" in str(error.value)
    assert "greater than or equal to 1" in str(error.value)


class UnionParams(BaseModel):
    runs: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    sizes: list[int] | None = None


def test_a_value_that_fits_no_type_of_a_union_is_one_problem_naming_each_type():
    """pydantic reports a union's branches apart, under names the user never wrote (``runs.constrained-int``)."""
    with pytest.raises(ValidationError) as error:
        UnionParams(runs=0, sizes=[1, "x"])
    assert pydantic_problems(error.value, UnionParams, "execution") == [
        ("execution.runs", "Input should be greater than or equal to 1; or 'auto' (got 0)"),
        ("execution.sizes.1", "Input should be a valid integer, unable to parse string as an integer (got 'x')"),  # optional: no union
    ]
    with pytest.raises(InvalidParamsError) as error:
        Registry.from_entry_points().resolve("executor", {"name": "local", "runs_per_gpu": "two"}, where="execution")
    expected = "Input should be a valid integer, unable to parse string as an integer; or 'auto' (got 'two')"
    assert error.value.errors == [("execution.runs_per_gpu", expected)]


def test_unknown_params_are_rejected_even_if_the_plugin_model_allows_extras(make_distribution):
    make_distribution(
        "lenient-plugin", "1.0", {"lenient": "lenient_plugin"}, {"lenient_plugin.py": PLUGIN_WITH_RESNET.replace('"resnet"', '"loose"')}
    )
    registry = Registry.from_entry_points()
    with pytest.raises(InvalidParamsError) as error:
        registry.resolve("generator", {"name": "loose", "widht": 3})
    assert error.value.errors[0][0] == "generator.widht"
    assert error.value.errors[0][1].startswith("unknown key; did you mean 'width'? Known: width")


def test_parameters_checked_strictly_still_pickle_as_the_plugins_own_model():
    """A data loader's worker processes get the dataset pickled, parameters and all (``--jobs`` with ``num_workers``)."""
    from unpaired_plugins.synthetic import SyntheticParams

    dataset = default_registry().build("dataset", {"name": "synthetic", "size": 8, "n_train": 3})
    copied = pickle.loads(pickle.dumps(dataset))
    assert type(copied.params) is SyntheticParams and copied.params == SyntheticParams(size=8, n_train=3)


def test_missing_name_is_reported_with_the_choices():
    with pytest.raises(InvalidParamsError, match=r"norm\.name: a norm needs a 'name'; one of: batch, instance, none"):
        Registry.from_entry_points().resolve("norm", {"affine": True})


def test_two_plugins_claiming_one_name_are_both_named(make_distribution):
    make_distribution("rival-gens", "2.3", {"rival": "rival_gens"}, {"rival_gens.py": PLUGIN_WITH_RESNET})
    registry = Registry.from_entry_points()
    with pytest.raises(ComponentConflictError) as error:
        registry.get("generator", "resnet")
    assert "registered by more than one plugin: rival-gens 2.3 and unpaired 0.2.0." in str(error.value)
    assert "UNPAIRED_PLUGINS" in str(error.value)
    assert registry.get("generator", "tiny").distribution == "rival-gens"  # the plugin's other names still work

    result = run_cli("plugins", "--json")  # a health check: the conflict is a problem, and the exit code says so
    assert result.returncode == 1
    assert json.loads(result.stdout)["problems"] == [str(error.value)]


def test_a_name_registered_twice_by_one_package_is_called_a_bug_of_that_package(make_distribution):
    twice = PLUGIN_WITH_RESNET.replace('register("resnet"', 'register("tiny"')
    make_distribution("double-reg", "0.2", {"double": "double_reg"}, {"double_reg.py": twice})
    with pytest.raises(ComponentConflictError) as error:
        Registry.from_entry_points().get("generator", "tiny")
    assert str(error.value).startswith("generator 'tiny' is registered 2 times by double-reg 0.2: a bug in that package")


def test_a_plugin_that_fails_to_import_is_named_and_the_others_still_load(make_distribution):
    make_distribution("broken-plugin", "0.9", {"broken": "broken_plugin"}, {"broken_plugin.py": "raise RuntimeError('boom at import')\n"})
    registry = Registry.from_entry_points()
    assert len(registry.problems) == 1
    assert "'broken' of broken-plugin 0.9 failed to import (broken_plugin): RuntimeError: boom at import" in registry.problems[0]
    assert registry.get("generator", "resnet").distribution == "unpaired"


def test_the_cli_still_works_beside_a_broken_plugin_and_warns(make_distribution):
    make_distribution("broken-plugin", "0.9", {"broken": "broken_plugin"}, {"broken_plugin.py": "import no_such_module\n"})
    result = run_cli("plugins", "--json")
    assert result.returncode == 1, result.stderr  # listed, and the exit code says the install has a problem
    listing = json.loads(result.stdout)
    assert {(c["kind"], c["name"]) for c in listing["components"]} >= {("generator", "resnet"), ("gan_loss", "wgangp")}
    assert "broken-plugin" in result.stderr and "No module named 'no_such_module'" in result.stderr


def test_a_misspelt_hook_is_reported_not_silently_ignored(make_distribution):
    source = "from unpaired import hookimpl\n\n@hookimpl\ndef unpaired_register_generator(register):\n    pass\n"
    make_distribution("typo-plugin", "1.0", {"typo": "typo_plugin"}, {"typo_plugin.py": source})
    registry = Registry.from_entry_points()
    assert any("typo-plugin" in p and "unpaired_register_generator" in p for p in registry.problems)


def test_a_bad_registration_is_reported(make_distribution):
    source = (
        "from unpaired import hookimpl\n\n@hookimpl\ndef unpaired_register_norms(register):\n"
        "    register('odd', print, dict, 'params_model is not pydantic')\n"
    )
    make_distribution("bad-reg", "1.0", {"bad": "bad_reg"}, {"bad_reg.py": source})
    registry = Registry.from_entry_points()
    assert any("registering norm 'odd'" in p and "pydantic BaseModel" in p for p in registry.problems)
    assert "odd" not in registry.names("norm")


def test_env_var_restricts_which_distributions_load(make_distribution, monkeypatch):
    make_distribution("rival-gens", "2.3", {"rival": "rival_gens"}, {"rival_gens.py": PLUGIN_WITH_RESNET})
    monkeypatch.setenv("UNPAIRED_PLUGINS", "unpaired")
    registry = Registry.from_entry_points()
    assert registry.get("generator", "resnet").distribution == "unpaired"
    assert "tiny" not in registry.names("generator")

    monkeypatch.setenv("UNPAIRED_PLUGINS", "Rival_Gens")  # names are matched PEP 503-normalised
    registry = Registry.from_entry_points()
    assert registry.names("generator") == ["resnet", "tiny"]
    assert registry.get("generator", "resnet").distribution == "rival-gens"
    assert registry.names("norm") == []


def test_env_var_naming_a_missing_distribution_is_reported(site, monkeypatch):
    monkeypatch.setenv("UNPAIRED_PLUGINS", "unpaired,not-installed")
    registry = Registry.from_entry_points()
    assert registry.problems == ["UNPAIRED_PLUGINS names 'not-installed', but no installed distribution of that name provides 'unpaired' plugins"]


def test_plugins_command_lists_every_builtin_with_origin_parameters_and_description(site):
    result = run_cli("plugins")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "resnet  (unpaired 0.2.0)" in out
    assert "n_blocks=9  ngf=64  dropout=0.0  padding='reflect'" in out
    assert "size=50  swap_probability=0.5" in out
    defaults = [line.split()[0] for line in out.splitlines() if line.endswith("[default]")]
    assert defaults == [
        "cyclegan",
        "resnet",
        "patchgan",
        "instance",
        "lsgan",
        "history",
        "constant",
        "inception",
        "fid",
        "kid",
        "local",
    ]  # the paper's choices, and training on this machine

    listing = json.loads(run_cli("plugins", "--json").stdout)
    found = {(c["kind"], c["name"]) for c in listing["components"]}
    assert found == {(kind, name) for kind, names in BUILTINS.items() for name in names}
    resnet = next(c for c in listing["components"] if c["name"] == "resnet")
    assert resnet["parameters"]["n_blocks"] == {"default": 9, "type": "int", "description": resnet["parameters"]["n_blocks"]["description"]}
    assert resnet["parameters"]["padding"]["choices"] == ["reflect", "replicate", "zeros"]
    assert resnet["default"] is True and next(c for c in listing["components"] if c["name"] == "pooled")["default"] is False
    assert listing["problems"] == []


def test_an_unexpected_error_shows_its_traceback_and_a_hint_while_known_errors_are_one_line(make_distribution, tmp_path):
    source = """
        from pydantic import BaseModel
        from unpaired.plugin_api import hookimpl

        class P(BaseModel):
            pass

        def build(params):
            return 1 / 0

        @hookimpl
        def unpaired_register_datasets(register):
            register("buggy", build, P, "a dataset with a bug")
    """
    make_distribution("buggy-data", "1.0", {"buggy": "buggy_data"}, {"buggy_data.py": source})
    result = run_cli("data", "export", "buggy", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "ZeroDivisionError: division by zero" in result.stderr
    assert "This is a bug in unpaired or in one of its plugins: please report it" in result.stderr
    known = run_cli("data", "export", "bugy", str(tmp_path / "out"))
    assert known.returncode == 2 and "Traceback" not in known.stderr
    assert known.stderr.startswith("error: unknown dataset 'bugy'. Did you mean 'buggy'?")


def test_every_command_names_plugins_that_failed_or_were_left_out_and_unknown_names_point_at_them(make_distribution, tmp_path, monkeypatch):
    make_distribution("broken-plugin", "0.9", {"broken": "broken_plugin"}, {"broken_plugin.py": "import no_such_module\n"})
    make_distribution("rival-gens", "2.3", {"rival": "rival_gens"}, {"rival_gens.py": PLUGIN_WITH_RESNET.replace('"resnet"', '"other"')})
    study = tmp_path / "study.yaml"
    study.write_text("name: s\nbase:\n  data: {name: synthetic, size: 32}\n  generator: {name: unet}\n")
    result = run_cli("validate", str(study))
    assert result.returncode == 2
    assert result.stderr.count("warning: plugin 'broken' of broken-plugin 0.9 failed to import") == 1
    assert "unknown generator 'unet'" in result.stderr
    assert "Not loaded, and perhaps providing it: plugin 'broken' of broken-plugin 0.9 failed to import" in result.stderr

    monkeypatch.setenv("UNPAIRED_PLUGINS", "unpaired")
    study.write_text("name: s\nbase:\n  data: {name: synthetic, size: 32}\n  generator: {name: tiny}\n")
    result = run_cli("validate", str(study))
    assert result.returncode == 2 and "note: UNPAIRED_PLUGINS leaves out " in result.stderr
    assert "UNPAIRED_PLUGINS leaves out broken-plugin, rival-gens, which provide(s) 'unpaired' plugins." in result.stderr


def test_a_qualified_name_picks_one_of_two_claimants_and_survives_a_round_trip(make_distribution):
    from unpaired.config.resolved import resolve_variant

    make_distribution("rival-gens", "2.3", {"rival": "rival_gens"}, {"rival_gens.py": PLUGIN_WITH_RESNET})
    registry = Registry.from_entry_points()
    with pytest.raises(ComponentConflictError, match=r"Say which with name: rival-gens:resnet or unpaired:resnet"):
        registry.get("generator", "resnet")
    assert registry.get("generator", "unpaired:resnet").distribution == "unpaired"
    assert registry.get("generator", "Rival_Gens:resnet").distribution == "rival-gens"
    assert registry.get("generator", "tiny").distribution == "rival-gens"  # plain names work when unambiguous
    with pytest.raises(UnknownComponentError, match="no distribution 'acme' registers the generator 'resnet'"):
        registry.get("generator", "acme:resnet")
    # a spec leaving the generator out gets the built-in default, named so that no claimant is ambiguous
    variant = resolve_variant({"data": {"name": "synthetic", "size": 32}}, registry)
    assert variant.generator.as_dict()["name"] == "unpaired:resnet" and variant.generator.component.distribution == "unpaired"
    assert resolve_variant(variant.as_dict(), registry).as_dict() == variant.as_dict()


def test_a_qualified_name_of_the_same_component_gives_the_same_run_id(make_distribution):
    """Following the conflict message's advice (``dist:name``) used to change the run id, so finished runs retrained."""
    make_distribution("acme-gans", "1.0", {"acme": "acme_gans"}, {"acme_gans.py": PLUGIN_WITH_RESNET})
    registry = Registry.from_entry_points()
    from unpaired.config.resolved import resolve_variant

    base = {"data": {"name": "synthetic", "size": 32}, "eval": {"metrics": []}}
    plain, qualified = (resolve_variant({**base, "generator": {"name": name}}, registry) for name in ("tiny", "acme-gans:tiny"))
    assert plain.run_id == qualified.run_id and qualified.generator.name == "acme-gans:tiny"
    builtin, theirs = (resolve_variant({**base, "generator": {"name": f"{d}:resnet"}}, registry) for d in ("unpaired", "acme-gans"))
    assert builtin.run_id != theirs.run_id  # two components of one name are two identities


def test_register_takes_default_as_its_fifth_argument_as_the_hookspec_documents(make_distribution):
    make_distribution(
        "positional",
        "1.0",
        {"positional": "positional_metric"},
        {
            "positional_metric.py": """
        from unpaired.plugin_api import hookimpl
        from unpaired_plugins.metrics import FID, FidParams

        @hookimpl
        def unpaired_register_metrics(register):
            register("fid_again", FID, FidParams, "FID under another name", True)
    """
        },
    )
    registry = Registry.from_entry_points()
    assert registry.get("metric", "fid_again").default and "fid_again" in registry.defaults("metric")
