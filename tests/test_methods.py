"""Methods and metrics are plugin kinds: a third-party method trains, resumes, scores, compares and reports."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
import torch
import yaml

from conftest import REPO, TINY_BASE, UNPAIRED, crash, write_distribution
from unpaired import hookimpl
from unpaired.config.overrides import merge
from unpaired.config.resolved import resolve_variant
from unpaired.plugin_api.registry import Registry
from unpaired.storage.run_folder import RunFolder
from unpaired.testing import ContractError, check_component, check_resume
from unpaired.training.run import train_run

ONE_WAY = """
    import copy

    import torch
    from pydantic import BaseModel, Field
    from torch import nn
    from unpaired.plugin_api import Method, Metric, Score, hookimpl


    class OneWayParams(BaseModel):
        adversarial: float = Field(1.0, gt=0)


    class OneWayGAN(Method):
        '''One generator A -> B against one discriminator: no cycle, no pool. Its GAN loss counts its calls (state).'''

        loss_terms = ("G_adv", "D")
        directions = ("AtoB",)
        discriminators = ("D",)

        def __init__(self, params, parts):
            self.networks = {"G": parts.generator(), "D": parts.discriminator()}
            self.G, self.D = (parts.runtime.place(net) for net in self.networks.values())
            self.gan_loss, self.weight, self.runtime = parts.gan_loss(), params.adversarial, parts.runtime
            self.opt_G = parts.runtime.adam(self.networks["G"].parameters(), parts.lr, parts.betas)
            self.opt_D = parts.runtime.adam(self.networks["D"].parameters(), parts.lr, parts.betas)
            self.steps = Counter()

        def translator(self, direction):
            return "G"

        def optimizers(self):
            return [self.opt_G, self.opt_D]

        def stateful(self):
            return {"opt_G": self.opt_G, "opt_D": self.opt_D, "steps": self.steps}

        def train_step(self, real_A, real_B, progress):
            self.steps.count += 1
            fake_B = self.G(real_A)
            self.D.requires_grad_(False)
            g = self.weight * self.gan_loss.generator_loss(self.D(fake_B))
            self.opt_G.zero_grad(set_to_none=True)
            g.backward()
            self.opt_G.step()
            self.D.requires_grad_(True)
            d = 0.5 * self.gan_loss.discriminator_loss(self.D(real_B), self.D(fake_B.detach()))
            self.opt_D.zero_grad(set_to_none=True)
            d.backward()
            self.opt_D.step()
            return {"G_adv": g, "D": d}


    class Counter:
        def __init__(self):
            self.count = 0

        def state_dict(self):
            return {"count": self.count}

        def load_state_dict(self, state):
            self.count = state["count"]


    class P(BaseModel):
        pass


    class MeanColour(nn.Module):
        '''Each image's mean colour: a cheap stand-in for Inception.'''

        def forward(self, images):
            return images.float().mean(dim=(2, 3)) / 255


    class Brightness(Metric):
        '''How much brighter the translations are than the targets; higher is "better" (to test the ranking).'''

        lower_is_better = False
        uses_features = False
        label = "Brightness gain"

        def compute(self, real, fake):
            return Score(float(fake.float().mean() - real.float().mean()))


    class EmaParams(BaseModel):
        counter_in_state: bool = True


    class OneWayEMA(OneWayGAN):
        '''The one-way GAN with an EMA of its generator, whose decay warms up with the step count (as in StyleGAN).'''

        def __init__(self, params, parts):
            super().__init__(OneWayParams(), parts)
            self.networks["G_ema"] = copy.deepcopy(self.networks["G"]).requires_grad_(False)
            self.counter_in_state = params.counter_in_state

        def stateful(self):
            parts = super().stateful()
            return parts if self.counter_in_state else {k: v for k, v in parts.items() if k != "steps"}

        def train_step(self, real_A, real_B, progress):
            losses = super().train_step(real_A, real_B, progress)
            decay = min(0.999, (1 + self.steps.count) / (10 + self.steps.count))
            with torch.no_grad():
                for average, weight in zip(self.networks["G_ema"].parameters(), self.networks["G"].parameters()):
                    average.lerp_(weight, 1 - decay)
            return losses


    @hookimpl
    def unpaired_register_methods(register):
        register("oneway", OneWayGAN, OneWayParams, "a one-way GAN: one generator, one discriminator, no cycle")
        register("oneway_ema", OneWayEMA, EmaParams, "the one-way GAN with an EMA generator")


    class NanFeatures(nn.Module):
        '''A broken extractor: NaN for every image.'''

        def forward(self, images):
            return torch.full((len(images), 3), float("nan"))


    @hookimpl
    def unpaired_register_feature_extractors(register):
        register("mean_colour", lambda params: MeanColour(), P, "mean colour of each image")
        register("nan_features", lambda params: NanFeatures(), P, "NaN features")


    @hookimpl
    def unpaired_register_metrics(register):
        register("brightness", lambda params: Brightness(), P, "mean brightness difference, higher is better")
"""

BASE = merge(
    TINY_BASE,
    {
        "method": {"name": "oneway"},
        "data": {"n_train": 4, "n_test": 3},
        "eval": {"metrics": ["fid", "brightness"], "feature_extractor": {"name": "mean_colour"}},
    },
)


@pytest.fixture
def one_way(site):
    write_distribution(site, "oneway-gan", "0.2", {"oneway": "oneway_gan"}, {"oneway_gan.py": ONE_WAY})
    return site


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.environ["PYTHONPATH"]}
    return subprocess.run([UNPAIRED, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_plugins_lists_the_method_and_metric_kinds_with_their_builtins(one_way):
    listing = json.loads(cli("plugins", "--json").stdout)["components"]
    found = {(c["kind"], c["name"]): c for c in listing}
    assert found["method", "cyclegan"]["default"] and found["method", "cyclegan"]["distribution"] == "unpaired"
    assert found["metric", "fid"]["default"] and found["metric", "kid"]["default"]
    assert found["method", "oneway"]["distribution"] == "oneway-gan" and not found["metric", "brightness"]["default"]


@pytest.mark.slow
def test_a_one_way_method_trains_scores_compares_and_reports_through_the_cli(one_way, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "oneway",
                "base": BASE,
                "variants": {"w1": {}, "w3": {"method": {"adversarial": 3.0}}},
                "seeds": [0, 1],
                "tracking": {"enabled": False},
            }
        )
    )
    ran = cli("run", str(study), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    out = tmp_path / "runs" / "oneway"
    index = json.loads((out / "study.json").read_text())
    assert index["metric"] == "fid_a2b"  # the method translates A -> B only: no fid_mean
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/seed*/result.json"))]
    assert len(results) == 4 and all(r["status"] == "finished" for r in results)
    assert all(set(r["metrics"]) == {"fid_a2b", "brightness_a2b"} for r in results)
    assert all(set(r["final_losses"]) == {"G_adv", "D"} for r in results)
    assert results[0]["scoring"]["lower_is_better"]["brightness_a2b"] is False and results[0]["scoring"]["extractor"] == "mean_colour"
    folder = next(out.glob("w1/seed0-*"))
    assert sorted(p.name for p in (folder / "generators").iterdir()) == ["AtoB.pt"]

    scored = cli("score", str(folder))
    assert scored.returncode == 0, scored.stderr
    assert f"fid_a2b {results[0]['metrics']['fid_a2b']:.4f}" in scored.stdout and "b2a" not in scored.stdout

    compared = json.loads(cli("compare", str(out), "--metric", "brightness_a2b", "--format", "json").stdout)["ranking"]
    means = {row["variant"]: row["mean"] for row in compared}
    assert [row["variant"] for row in compared] == sorted(means, key=means.get, reverse=True)  # higher is better, as the metric says

    assert "fid_a2b (mean_colour) mean ± std" in cli("compare", str(out), "--metric", "fid_a2b").stdout  # the extractor is named
    by_brightness = cli("compare", str(out), "--metric", "brightness_a2b").stdout  # images, not features: no extractor named
    assert "Ranked by Brightness gain, final generators (A→B)\n" in by_brightness and "brightness_a2b mean ± std" in by_brightness

    reported = cli("report", str(out))
    assert reported.returncode == 0, reported.stderr
    html = (out / "report.html").read_text()
    assert "FID, final generators (A→B), mean_colour features" in html
    assert "Panels: G_adv (oneway); D (oneway)." in html  # a plugin method's own terms, each on its own


class CrashAfterEpoch:
    @hookimpl
    def unpaired_on_epoch_end(self, run, epoch, metrics):
        if epoch == 1:
            crash()


def test_the_public_resume_check_fails_a_method_whose_stateful_leaves_out_its_ema_counter(one_way):
    """Resume silently differed (another sha256) while check_component passed."""
    small = {key: TINY_BASE[key] for key in ("generator", "discriminator")}
    check_resume("oneway_ema", variant=small)  # the counter goes through the checkpoint: the resumed run ends bit-identical
    with pytest.raises(ContractError, match=r"method 'oneway_ema' of oneway-gan 0.2: stopped after step 3 .*networks\.G_ema\."):
        check_resume("oneway_ema", {"counter_in_state": False}, variant=small)
    with pytest.raises(ContractError, match="networks.G_ema"):  # check_component runs it for every method
        check_component("method", "oneway_ema", {"counter_in_state": False}, variant=small)


def test_the_readme_s_worked_method_is_complete_and_passes_the_plugin_checks(make_distribution):
    """The README's method left out train_step; a method author had to piece it together from docstrings."""
    readme = (REPO / "README.md").read_text()
    code = readme.split("**A method, worked.**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    make_distribution("readme-method", "1.0", {"readme": "readme_method"}, {"readme_method.py": code})
    small = {key: TINY_BASE[key] for key in ("generator", "discriminator")}
    checked = check_component("method", "oneway", {"ema": 0.9}, variant=small)  # probes, trains, resumes exactly
    assert checked.component.distribution == "readme-method" and list(checked.losses[0]) == ["G_adv", "D", "D_reg"]


def test_a_method_s_every_stateful_part_resumes_exactly(one_way, tmp_path):
    registry = Registry.from_entry_points()
    spec = merge(BASE, {"eval": {"metrics": []}, "train": {"epochs": 1, "decay_epochs": 1}})
    variant = resolve_variant(spec, registry)
    straight = train_run(variant, RunFolder(tmp_path / "straight"), registry, show_progress=False).result
    with registry.listening(CrashAfterEpoch()):
        assert train_run(variant, RunFolder(tmp_path / "resumed"), registry, show_progress=False).result.status == "failed"
    resumed = train_run(variant, RunFolder(tmp_path / "resumed"), registry, show_progress=False).result
    assert straight.status == resumed.status == "finished" and straight.final_losses == resumed.final_losses
    a, b = (RunFolder(tmp_path / name).load_checkpoint().model for name in ("straight", "resumed"))
    assert a["parts"]["steps"] == b["parts"]["steps"] == {"count": 8}  # the method's own counter went through the checkpoint
    assert all(torch.equal(a["networks"][n][k], b["networks"][n][k]) for n in a["networks"] for k in a["networks"][n])


@pytest.mark.slow
def test_a_nan_score_is_a_failed_scoring_everywhere_never_a_dropped_variant(one_way, tmp_path):
    """It used to be a 'done' run with NaN metrics: exit 0, the variant silently gone from compare and the report."""
    study = tmp_path / "study.yaml"
    base = merge(TINY_BASE, {"data": {"n_test": 3}, "eval": {"metrics": ["fid"], "feature_extractor": {"name": "nan_features"}}})
    study.write_text(yaml.safe_dump({"name": "nan", "base": base, "grid": {"generator.ngf": [4, 5]}, "tracking": {"enabled": False}}))
    ran = cli("run", str(study), "--quiet", cwd=tmp_path)
    assert ran.returncode == 1, ran.stderr[:6000]
    assert "FAILED ngf=4 seed 0: the scoring failed: fid_a2b is nan; fid_b2a is nan" in ran.stdout
    out = tmp_path / "runs" / "nan"
    compared = cli("compare", str(out), "--format", "json")
    assert compared.returncode == 0, compared.stderr
    rows = json.loads(compared.stdout)["ranking"]
    assert [(row["variant"], row["n"], row["verdict"]) for row in rows] == [
        ("ngf=4", 0, "no finite score: the scoring failed"),
        ("ngf=5", 0, "no finite score: the scoring failed"),
    ]
    reported = cli("report", str(out))
    assert reported.returncode == 0, reported.stderr
    assert "no finite score: the scoring failed" in (out / "report.html").read_text()


def test_scores_are_computed_in_float32_whatever_autocast_the_caller_is_in(one_way):
    """One precision policy: a run under bf16 autocast scores its generators exactly as an fp32 caller would."""
    from unpaired.evaluation.scoring import Scorer
    from unpaired.training.parts import build_method

    registry = Registry.from_entry_points()
    variant = resolve_variant(
        merge(TINY_BASE, {"data": {"n_test": 4}, "eval": {"metrics": ["fid", "brightness"], "feature_extractor": {"name": "mean_colour"}}}), registry
    )
    torch.manual_seed(0)
    data = variant.data.build()
    method = build_method(variant, torch.device("cpu"), data.transform.crop_size)
    translators = {d: method.networks[method.translator(d)] for d in method.directions}
    scorer = Scorer(variant.eval, torch.device("cpu"))
    plain = scorer.score(translators, data, variant.data.as_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_bf16 = scorer.score(translators, data, variant.data.as_dict())
        assert translators["AtoB"](data.test_image("A", 0)[None]).dtype == torch.bfloat16  # the caller's autocast is real
    assert plain.values == under_bf16.values and set(plain.values) >= {"fid_a2b", "fid_b2a", "fid_mean", "brightness_mean"}


def test_a_study_scored_only_by_image_metrics_needs_no_feature_extractor(one_way, tmp_path):
    """Inception was loaded for every scored study, so a study whose metrics all compare images was refused when its
    weights were missing, and each run loaded a network it never used. Its scores do not depend on the extractor."""
    missing = tmp_path / "missing.pth"
    study = tmp_path / "study.yaml"
    base = merge(BASE, {"eval": {"metrics": ["brightness"], "feature_extractor": {"name": "inception", "weights": str(missing)}}})
    study.write_text(yaml.safe_dump({"name": "images", "base": base, "tracking": {"enabled": False}}))
    ran = cli("run", str(study), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    [result] = [json.loads(path.read_text()) for path in (tmp_path / "runs" / "images").glob("*/seed*/result.json")]
    assert result["status"] == "finished" and math.isfinite(result["metrics"]["brightness_a2b"])
    assert result["scoring"]["extractor"] == ""  # no extractor made these scores, so none is named beside them
    compared = cli("compare", str(tmp_path / "runs" / "images"), "--format", "json")
    assert compared.returncode == 0 and "rescore" not in compared.stdout, compared.stdout + compared.stderr

    registry = Registry.from_entry_points()

    def evaluation(metrics, extractor):
        return resolve_variant(merge(base, {"eval": {"metrics": metrics, "feature_extractor": {"name": extractor}}}), registry).eval

    images_only = evaluation(["brightness"], "inception")
    assert not images_only.uses_features
    assert images_only.identity("") == evaluation(["brightness"], "mean_colour").identity("") == result["scoring"]["identity"]
    # a metric that uses features makes the extractor, and what it says of itself, part of the identity again
    with_fid = evaluation(["fid", "brightness"], "mean_colour")
    assert with_fid.uses_features and with_fid.identity("") != with_fid.identity("other weights")
    assert with_fid.identity("") != evaluation(["fid", "brightness"], "inception").identity("")


@pytest.mark.slow
def test_finished_work_is_found_by_run_id_rescored_when_the_evaluation_changes_and_old_configurations_are_named(one_way, tmp_path):
    """Renaming variants (``[0, 5]`` -> ``[0.0, 5.0]``) used to retrain everything into new folders; a changed metric or
    extractor used to leave the old numbers in place under the new heading; changed configurations were mixed silently."""
    study = tmp_path / "study.yaml"
    base = merge(TINY_BASE, {"data": {"n_test": 3}, "eval": {"metrics": ["brightness"], "feature_extractor": {"name": "mean_colour"}}})
    spec = {"name": "ids", "base": base, "grid": {"loss_weights.identity": [0, 5]}, "tracking": {"enabled": False}}
    study.write_text(yaml.safe_dump(spec))
    assert cli("run", str(study), "--quiet", cwd=tmp_path).returncode == 0
    out = tmp_path / "runs" / "ids"
    trained = {p.parent.name: p.read_bytes() for p in out.glob("*/seed*/history.json")}  # folder name -> what training wrote

    spec["grid"] = {"loss_weights.identity": [0.0, 5.0]}  # the same runs, spelt otherwise: other variant names
    study.write_text(yaml.safe_dump(spec))
    planned = cli("plan", str(study), cwd=tmp_path).stdout
    assert "done (in identity=0/seed0-" in planned and "`run` moves it)" in planned
    rerun = cli("run", str(study), "--quiet", cwd=tmp_path)
    assert rerun.returncode == 0 and "skipped 2" in rerun.stdout and "moved to runs/ids/identity=0.0/seed0-" in rerun.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["identity=0.0", "identity=5.0"]
    assert {p.parent.name: p.read_bytes() for p in out.glob("*/seed*/history.json")} == trained  # nothing trained again

    spec["base"]["eval"]["metrics"] = ["brightness", "fid"]  # another evaluation: the runs are scored again, not trained
    study.write_text(yaml.safe_dump(spec))
    assert cli("plan", str(study), cwd=tmp_path).stdout.count(" rescore ") == 2
    rescored = cli("run", str(study), "--quiet", cwd=tmp_path)
    assert rescored.returncode == 0 and "2 finished run(s) have no scores of this study's evaluation" in rescored.stderr
    assert {p.parent.name: p.read_bytes() for p in out.glob("*/seed*/history.json")} == trained
    assert all({"fid_mean", "brightness_mean"} <= set(json.loads(p.read_text())["metrics"]) for p in out.glob("*/seed*/result.json"))
    assert cli("plan", str(study), cwd=tmp_path).stdout.count(" done ") == 2

    spec["base"]["generator"]["ngf"] = 5  # another configuration: the old runs are named, never mixed in
    study.write_text(yaml.safe_dump(spec))
    planned = cli("plan", str(study), cwd=tmp_path).stdout
    assert planned.count("not planned any more: identity=") == 2 and "generator.ngf: 4 -> 5" in planned
    assert cli("run", str(study), "--quiet", cwd=tmp_path).returncode == 0
    compared = cli("compare", str(out), "--metric", "fid_mean", "--format", "json")
    assert "note: 2 finished run(s) of configurations the study no longer plans are left out" in compared.stderr
    assert [row["n"] for row in json.loads(compared.stdout)["ranking"]] == [1, 1]


@pytest.mark.slow
def test_a_study_of_cyclegan_against_cut_ranks_both_on_the_direction_they_share(one_way, tmp_path):
    study = tmp_path / "study.yaml"
    base = merge(BASE, {"method": {"name": "cut", "nce_layers": ["input", "down1", "down2", "block1"], "num_patches": 16}})
    base["eval"]["metrics"] = ["fid"]
    spec = {"name": "methods", "base": base, "grid": {"method.name": ["cyclegan", "cut"]}, "baseline": "method=cyclegan", "seeds": [0, 1]}
    study.write_text(yaml.safe_dump({**spec, "tracking": {"enabled": False}}))
    checked = cli("validate", str(study), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "baseline 'method=cyclegan', ranked by fid_a2b" in checked.stdout
    assert "note: the variants are ranked by fid_a2b: fid_mean, the baseline's headline score, is not a score of method=cut" in checked.stderr
    ran = cli("run", str(study), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    out = tmp_path / "runs" / "methods"
    folders = {p.parent.parent.name: sorted(g.name for g in (p.parent / "generators").iterdir()) for p in out.glob("*/seed0-*/result.json")}
    assert folders == {"method=cyclegan": ["AtoB.pt", "BtoA.pt"], "method=cut": ["AtoB.pt"]}

    for metric in ("fid_a2b", None):  # by default, the study's ranking score
        compared = cli("compare", str(out), "--format", "json", *(["--metric", metric] if metric else []))
        assert compared.returncode == 0 and compared.stderr == "", compared.stderr
        assert sorted((row["variant"], row["n"]) for row in json.loads(compared.stdout)["ranking"]) == [("method=cut", 2), ("method=cyclegan", 2)]
    by_mean = cli("compare", str(out), "--format", "json", "--metric", "fid_mean")
    assert [row["variant"] for row in json.loads(by_mean.stdout)["ranking"]] == ["method=cyclegan"]
    assert "note: method=cut has no fid_mean (not scored so: a method that translates one direction" in by_mean.stderr
    assert "every variant has: fid_a2b" in by_mean.stderr

    reported = cli("report", str(out))
    assert reported.returncode == 0, reported.stderr
    html = (out / "report.html").read_text()
    assert "FID, final generators (A→B), mean_colour features" in html and "method=cut" in html and "A → B: test images" in html
    assert "B → A: test images" in html and "No final generators" not in html  # CUT has no B -> A column, and is not missing from it


@pytest.mark.slow
def test_after_a_plugin_default_changes_every_way_of_naming_the_study_compares_only_the_runs_it_plans_now(one_way, tmp_path, monkeypatch):
    """``compare runs/FOLDER`` showed the runs trained before the method's default changed under the variant's name,
    and ``compare NAME`` (MLflow) averaged the old run with the new one: all three ways, and the report, leave them out."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    study = tmp_path / "study.yaml"
    variants = {"w1": {}, "w3": {"method": {"adversarial": 3.0}}}
    base = merge(BASE, {"eval": {"metrics": ["brightness"]}})
    study.write_text(yaml.safe_dump({"name": "defaults", "base": base, "variants": variants, "seeds": [0, 1]}))
    assert cli("run", str(study), "--quiet", cwd=tmp_path).returncode == 0
    out = tmp_path / "runs" / "defaults"
    named = {"folder": str(out), "file": str(study), "MLflow name": "defaults"}
    trained = set(out.glob("*/seed*/result.json"))

    def ranked(target):
        compared = cli("compare", target, "--format", "json", cwd=tmp_path)
        assert compared.returncode == 0, compared.stderr
        return {row["variant"]: (row["n"], row["mean"]) for row in json.loads(compared.stdout)["ranking"] if row["n"]}, compared.stderr

    before = {way: ranked(target)[0] for way, target in named.items()}
    assert all(rows == before["folder"] and [n for n, _ in rows.values()] == [2, 2] for rows in before.values()), before

    changed = ONE_WAY.replace("Field(1.0,", "Field(2.0,")  # the method's default adversarial weight
    write_distribution(tmp_path / "site", "oneway-gan", "0.2", {"oneway": "oneway_gan"}, {"oneway_gan.py": changed})
    left_out = "note: 2 finished run(s) of configurations the study no longer plans are left out (`unpaired plan` says what changed)"
    for way, target in named.items():  # before the next run: w1's runs are another configuration now
        rows, notes = ranked(target)
        assert rows == {"w3": before[way]["w3"]} and left_out in notes, (way, notes)
        assert "Downloading artifacts" not in notes  # MLflow's progress bar for reading the study it recorded

    assert cli("run", str(study), "--quiet", "--only", "w1", "--seeds", "0", cwd=tmp_path).returncode == 0
    (rerun,) = set(out.glob("w1/seed0-*/result.json")) - trained
    new = json.loads(rerun.read_text())["metrics"]["brightness_a2b"]
    for way, target in named.items():  # one seed rerun: its score alone, never averaged with the old seed 1
        rows, notes = ranked(target)
        assert rows["w1"] == (1, pytest.approx(new)) and rows["w3"] == before[way]["w3"] and left_out in notes, (way, notes)
    assert cli("report", str(out), cwd=tmp_path).returncode == 0
    assert "2 finished run(s) of configurations the study no longer plans are left out" in (out / "report.html").read_text()
