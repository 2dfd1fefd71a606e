"""Variant specs: the paper's defaults, YAML and JSON alike, and errors that name file, path and value."""

from __future__ import annotations

import json

import pytest

from unpaired.config.resolved import load_variant, resolve_variant
from unpaired.config.spec import SpecError

DATA = {"name": "synthetic", "size": 32}


def test_every_default_is_the_papers(registry):
    resolved = resolve_variant({"data": DATA}, registry).as_dict()
    assert resolved["generator"] == {"name": "resnet", "n_blocks": 9, "ngf": 64, "dropout": 0.0, "padding": "reflect"}
    assert resolved["discriminator"] == {"name": "patchgan", "ndf": 64, "n_layers": 3}
    assert resolved["generator_norm"] == resolved["discriminator_norm"] == {"name": "instance", "affine": False}
    assert resolved["gan_loss"]["name"] == "lsgan"
    assert resolved["loss_weights"] == {"name": "constant", "adversarial": 1.0, "cycle": 10.0, "identity": 5.0}
    assert resolved["image_pool"] == {"name": "history", "size": 50, "swap_probability": 0.5}
    train = resolved["train"]
    assert (train["epochs"], train["decay_epochs"], train["batch_size"], train["lr"]) == (100, 100, 1, 2e-4)
    assert (train["betas"], train["init"], train["init_gain"], train["precision"]) == ([0.5, 0.999], "normal", 0.02, "fp32")


def test_norms_can_differ_between_generator_and_discriminator(registry):
    resolved = resolve_variant({"data": DATA, "norm": {"name": "batch"}, "discriminator_norm": {"name": "none"}}, registry)
    assert resolved.generator_norm.as_dict() == {"name": "batch", "momentum": 0.1}
    assert resolved.discriminator_norm.as_dict() == {"name": "none"}


def test_all_problems_are_reported_with_file_dotted_path_and_value(registry, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "data: {name: synthetic, size: 32}\n"
        "generater: {name: resnet}\n"
        "scoring: {metrics: []}\n"
        "generator: {name: resnet, n_blocks: nine}\n"
        "discriminator: {name: patchgn}\n"
        "train: {lr: fast, device: gpu}\n"
    )
    with pytest.raises(SpecError) as error:
        load_variant(path, registry)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert "generater: unknown key; did you mean 'generator'?" in message
    assert "scoring: unknown key. Known: method, data, generator," in message  # nothing close: a sentence of its own
    assert "train.lr: Input should be a valid number" in message and "(got 'fast')" in message
    assert "train.device: String should match pattern" in message and "(got 'gpu')" in message
    # component parameters are checked once the spec's own fields are valid
    path.write_text("data: {name: synthetic, size: 32}\ngenerator: {name: resnet, n_blocks: nine}\ndiscriminator: {name: patchgn}\n")
    with pytest.raises(SpecError) as error:
        load_variant(path, registry)
    problems = dict(error.value.problems)
    assert "got 'nine'" in problems["generator.n_blocks"]
    assert "Did you mean 'patchgan'?" in problems["discriminator.name"]


def test_values_that_would_only_fail_once_training_starts_are_refused_by_validation(registry, tmp_path):
    """An infinite learning rate or loss weight passed validation and stopped the run at its first loss; Adam refused a
    beta of 1 only when built; no epochs at all trained nothing and scored the untrained generators as a finished run."""
    path = tmp_path / "odd.yaml"

    def problems(sections: str) -> dict[str, str]:
        path.write_text(f"data: {{name: synthetic, size: 32}}\n{sections}")
        with pytest.raises(SpecError) as error:
            load_variant(path, registry)
        return dict(error.value.problems)

    assert problems("train: {lr: .inf, betas: [0.5, 1.0], init_gain: .nan}\n") == {
        "train.lr": "Input should be a finite number (got inf)",
        "train.betas.1": "Input should be less than 1 (got 1.0)",
        "train.init_gain": "Input should be a finite number (got nan)",
    }
    assert problems("train: {epochs: 0, decay_epochs: 0}\n") == {
        "train": "epochs + decay_epochs is 0: a run would train nothing and score its untrained generators"
    }
    assert problems("loss_weights: {name: constant, cycle: .inf}\ngan_loss: {name: lsgan, real_label: .nan}\n") == {
        "loss_weights.cycle": "Input should be a finite number (got inf)",
        "gan_loss.real_label": "Input should be a finite number (got nan)",
    }
    assert problems("loss_weights: {name: constant, adversarial: 0, cycle: 0, identity: 0}\n") == {  # a finished run of untrained generators too
        "loss_weights": "adversarial, cycle and identity are all 0: the generators would never change; give one a weight above 0"
    }
    assert problems("gan_loss: {name: lsgan, real_label: 0.5, fake_label: 0.5}\n") == {
        "gan_loss": "real_label and fake_label are both 0.5: the discriminator would have nothing to tell apart"
    }
    assert problems("gan_loss: {name: vanilla, real_label: 9}\n") == {  # a cross-entropy target is a probability
        "gan_loss.real_label": "Input should be less than or equal to 1 (got 9)"
    }


def test_yaml_syntax_errors_give_line_and_column(registry, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  name: synthetic\n  size: [32\n")
    with pytest.raises(SpecError, match=rf"^{path}:4:1: 1 problem:\n  invalid YAML"):
        load_variant(path, registry)


def test_json_syntax_errors_give_line_and_column(registry, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": {"name": "synthetic",}}')
    with pytest.raises(SpecError, match=rf"^{path}:1:31: 1 problem:\n  invalid JSON"):
        load_variant(path, registry)


def test_yaml_and_json_give_the_same_variant_and_id(registry, tmp_path):
    spec = {"data": DATA, "generator": {"name": "resnet", "n_blocks": 6}, "train": {"seed": 3}}
    (tmp_path / "v.json").write_text(json.dumps(spec))
    (tmp_path / "v.yaml").write_text("data: {name: synthetic, size: 32}\ngenerator: {name: resnet, n_blocks: 6}\ntrain: {seed: 3}\n")
    from_json, from_yaml = load_variant(tmp_path / "v.json", registry), load_variant(tmp_path / "v.yaml", registry)
    assert from_json.as_dict() == from_yaml.as_dict()
    assert from_json.run_id == from_yaml.run_id


def test_run_id_ignores_runtime_settings_but_not_results(registry):
    def variant_id(**changes):
        return resolve_variant({"data": DATA, **changes}, registry).run_id

    base = variant_id()
    assert len(base) == 12
    assert variant_id(train={"device": "cpu", "num_workers": 7, "log_every": 3, "compile": True}) == base
    assert variant_id(generator={"name": "resnet", "n_blocks": 9}) == base  # explicit default == implicit default
    assert variant_id(generator={"name": "resnet", "n_blocks": 6}) != base
    assert variant_id(train={"seed": 1}) != base
    assert variant_id(train={"precision": "bf16"}) != base


def test_the_variant_key_is_the_run_id_without_the_seed(registry):
    seeded = [resolve_variant({"data": DATA, "train": {"seed": seed}}, registry) for seed in (0, 1)]
    assert seeded[0].variant_key == seeded[1].variant_key and seeded[0].run_id != seeded[1].run_id
    other = resolve_variant({"data": DATA, "generator": {"name": "resnet", "n_blocks": 6}}, registry)
    assert other.variant_key != seeded[0].variant_key


def test_the_resolved_variant_round_trips_through_plain_data(registry):
    """What spec.json, checkpoints and workers in other processes get resolves to the same variant."""
    variant = resolve_variant({"data": DATA, "norm": {"name": "batch"}, "eval": {"every": 2}}, registry)
    again = resolve_variant(variant.as_dict(), registry)
    assert again.as_dict() == variant.as_dict() and again.run_id == variant.run_id


def test_a_parameter_override_of_a_component_the_spec_leaves_out_sets_it_on_the_default_component(registry, tmp_path):
    """``image_pool.size=7`` on a base without image_pool said ``base.image_pool.name: Field required``."""
    from conftest import TINY_BASE, write_study
    from unpaired.config.study import load_study

    study = load_study(write_study(tmp_path / "s.yaml", "s"), registry, ["image_pool.size=7"])
    pool = study.runs[0].resolved.image_pool.as_dict()
    assert pool["name"] == registry.default("image_pool") and pool["size"] == 7
    variant = tmp_path / "v.json"
    variant.write_text(json.dumps(TINY_BASE))
    assert load_variant(variant, registry, ["image_pool.size=3"]).image_pool.as_dict()["size"] == 3


def test_a_study_s_setting_given_to_a_variant_alone_says_that_train_is_never_tracked(registry, tmp_path):
    """``unpaired train v.yaml tracking.enabled=false`` answered "tracking: unknown key; did you mean 'train'?"."""
    from conftest import TINY_BASE
    from unpaired.config.resolved import STUDY_SETTINGS
    from unpaired.config.study import StudySpec

    assert set(STUDY_SETTINGS) == set(StudySpec.model_fields) - {"base"}
    variant = tmp_path / "v.json"
    variant.write_text(json.dumps(TINY_BASE))
    with pytest.raises(SpecError) as raised:
        load_variant(variant, registry, ["tracking.enabled=false", "seeds=[1]", "trian.epochs=2"])
    problems = dict(raised.value.problems)
    assert "`unpaired train` is never tracked in MLflow: there is nothing to switch off" in problems["tracking"]
    assert problems["seeds"].startswith("a study's setting, not a variant's; to use it, make this spec the base of a study")
    assert problems["trian"].startswith("unknown key; did you mean 'train'?")


def test_a_variant_spec_given_where_a_study_is_read_is_named_as_one(registry, tmp_path):
    """``unpaired validate variant.yaml`` listed six problems (name and base missing, each variant field an unknown key
    of a study) instead of saying what the file is and how to use it."""
    from conftest import TINY_BASE
    from unpaired.config.study import VARIANT_FIELD, VARIANT_NOT_STUDY, load_study

    variant = tmp_path / "v.json"
    variant.write_text(json.dumps(TINY_BASE))
    with pytest.raises(SpecError) as raised:
        load_study(variant, registry)
    assert raised.value.problems == [("", VARIANT_NOT_STUDY)] and "`unpaired train` trains it" in VARIANT_NOT_STUDY
    named = tmp_path / "named.json"  # a study's name beside a variant's fields: each field is told where it goes
    named.write_text(json.dumps({"name": "x", "seeds": [0], **TINY_BASE}))
    with pytest.raises(SpecError) as raised:
        load_study(named, registry)
    assert dict(raised.value.problems) == {"base": "Field required", **{key: VARIANT_FIELD for key in TINY_BASE}}
