"""FID/KID: the real Inception numbers, the cache of real features, the preflight, re-scoring."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch
from pydantic import BaseModel
from torch import nn

from conftest import FID_WEIGHTS, TINY_BASE, run_cli, write_synthetic_folder
from unpaired import hookimpl
from unpaired.errors import Notice
from unpaired.config.overrides import merge
from unpaired.config.resolved import resolve_variant
from unpaired.config.study import plan_study
from unpaired.evaluation.features import EvaluationError, FeatureExtractor, expected_evaluations
from unpaired.evaluation.scoring import Scorer
from unpaired.execution.runner import run_study
from unpaired_plugins.metrics import FID, KID, FidParams, KidParams
from unpaired.plugin_api.registry import ComponentError, Registry
from unpaired.storage.run_folder import RunFolder
from unpaired.training.run import train_run


def fid_from_features(real, fake):
    return FID(FidParams()).compute(real, fake).value


def kid_from_features(real, fake):
    score = KID(KidParams()).compute(real, fake)
    return score.value, score.details.get("std")


CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def inception():
    """The real Inception, loaded once for the module."""
    choice = Registry.from_entry_points().resolve("feature_extractor", {"name": "inception", "weights": str(FID_WEIGHTS)})
    return FeatureExtractor(choice, CPU, batch_size=20)


def synthetic_images(registry, domain, n, seed=0):
    data = registry.build("dataset", {"name": "synthetic", "size": 64, "n_test": n, "seed": seed})
    return [data.test_image(domain, i) for i in range(n)]


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The pytorch-fid formula, written independently with numpy/scipy."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


@pytest.mark.parametrize("real_rows, fake_rows, width", [(130, 140, 512), (300, 200, 64), (50, 3000, 64)])
def test_fid_is_the_frechet_distance_with_fewer_or_more_images_than_features(real_rows, fake_rows, width):
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(width, width, generator=generator) / width**0.5
    real = (torch.randn(real_rows, width, generator=generator) @ mixing).abs()
    fake = (torch.randn(fake_rows, width, generator=generator) @ mixing).abs() * 1.1 + 0.05
    assert fid_from_features(real, fake) == pytest.approx(scipy_frechet(real.double().numpy(), fake.double().numpy()), rel=1e-6)
    # fake = 2 real + 1: covariance 4 S, so tr S + tr 4S - 2 tr (4 S^2)^1/2 = tr S, and the means differ by mean(real) + 1
    doubled = real.double() * 2 + 1
    expected = (real.double().mean(0) + 1).square().sum() + torch.cov(real.double().T).trace()
    assert fid_from_features(real, doubled) == pytest.approx(float(expected), rel=1e-10)
    assert abs(fid_from_features(real, real)) < 1e-9
    with pytest.raises(ValueError, match="at least 2 images on each side, got 1 real"):
        fid_from_features(real[:1], fake)


@pytest.mark.slow
def test_real_inception_fid_is_zero_against_itself_matches_scipy_and_grows_with_a_shift(registry, inception):
    stripes = inception(synthetic_images(registry, "B", 24))
    assert stripes.shape == (24, 2048)
    assert abs(fid_from_features(stripes, stripes)) < 1e-3

    blobs = inception(synthetic_images(registry, "A", 24, seed=1))
    between_domains = fid_from_features(stripes, blobs)
    expected = scipy_frechet(stripes.double().numpy(), blobs.double().numpy())
    assert between_domains == pytest.approx(expected, rel=1e-3)

    def shifted(amount):
        return inception([(image + amount).clamp(-1, 1) for image in synthetic_images(registry, "B", 24)])

    slightly_shifted = shifted(0.2)
    slightly, strongly = fid_from_features(stripes, slightly_shifted), fid_from_features(stripes, shifted(0.6))
    assert 1.0 < slightly < strongly
    kid_shifted, _ = kid_from_features(stripes, slightly_shifted)
    kid_same, _ = kid_from_features(stripes, stripes)
    assert kid_same < kid_shifted


def test_kid_reports_a_spread_over_subsets_only_where_the_subsets_differ():
    """With the subsets as large as both sets, each was the same two sets shuffled: its std (about 1e-7) read as a
    KID known exactly."""
    generator = torch.Generator().manual_seed(0)
    real, fake, more = (torch.randn(n, 16, generator=generator) + shift for n, shift in ((30, 0.0), (30, 0.3), (60, 0.3)))
    whole, none = kid_from_features(real, fake)
    subsampled, spread = kid_from_features(real, more)
    assert none is None and whole > 0
    assert spread is not None and spread > 1e-3 * abs(subsampled)


class TinyParams(BaseModel):
    pass


class TinyExtractor(nn.Module):
    """Mean and spread of each colour channel plus a gradient energy: 7 features, counts its images."""

    seen = 0

    def __init__(self, params):
        super().__init__()

    def forward(self, images):
        TinyExtractor.seen += images.shape[0]
        x = images.float() / 255
        grad = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), grad[:, None]], dim=1)


class TinyPlugin:
    @hookimpl
    def unpaired_register_feature_extractors(self, register):
        register("tiny", TinyExtractor, TinyParams, "test extractor")


@pytest.fixture
def tiny_registry():
    registry = Registry.from_entry_points()
    registry.add_plugin(TinyPlugin(), "tiny", "tests", "0")
    return registry


def variant(registry, root, seed=0, **eval_fields):
    return resolve_variant(
        {
            "data": {"name": "folder", "root": str(root), "load_size": None, "crop_size": 32},
            "generator": {"name": "resnet", "n_blocks": 1, "ngf": 4},
            "discriminator": {"name": "patchgan", "ndf": 4, "n_layers": 2},
            "train": {"epochs": 1, "decay_epochs": 1, "num_workers": 0, "seed": seed},
            "samples": 1,
            "eval": {"feature_extractor": {"name": "tiny"}, **eval_fields},
        },
        registry,
    )


def test_real_features_are_extracted_once_per_test_set_and_again_when_a_file_changes(tiny_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("UNPAIRED_CACHE", str(tmp_path / "cache"))
    write_synthetic_folder(tmp_path / "data", n_train=4, n_test=5)
    TinyExtractor.seen = 0
    first = train_run(variant(tiny_registry, tmp_path / "data"), RunFolder(tmp_path / "one"), tiny_registry, show_progress=False).result
    assert TinyExtractor.seen == 1 + 10 + 10  # preflight image, real testA + testB, fakes both ways
    assert set(first.metrics) == {"fid_a2b", "fid_b2a", "fid_mean", "kid_a2b", "kid_b2a", "kid_mean"}  # 5 vs 5 images: no KID spread

    TinyExtractor.seen = 0
    train_run(variant(tiny_registry, tmp_path / "data", seed=1), RunFolder(tmp_path / "two"), tiny_registry, show_progress=False)
    assert TinyExtractor.seen == 1 + 10  # the real features came from the cache

    (tmp_path / "data" / "testB" / "00000.png").write_bytes((tmp_path / "data" / "testA" / "00000.png").read_bytes())
    TinyExtractor.seen = 0
    train_run(variant(tiny_registry, tmp_path / "data", seed=2), RunFolder(tmp_path / "three"), tiny_registry, show_progress=False)
    assert TinyExtractor.seen == 1 + 5 + 10  # testB changed: only its features are extracted again


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda path: path.write_bytes(path.read_bytes()[:100]), r"cannot be read \(is a torn torch archive"),
        (lambda path: torch.save({**torch.load(path), "features": torch.zeros(3, 8)}, path), "hold 3 rows for 5 test images"),
        (lambda path: torch.save({**torch.load(path), "features": torch.load(path)["features"] * float("nan")}, path), "not finite"),
        (lambda path: torch.save({**torch.load(path), "key": "other"}, path), "other images or another extractor"),
    ],
    ids=["torn", "rows", "nan", "key"],
)
def test_damaged_cached_features_are_named_and_computed_again(tiny_registry, tmp_path, monkeypatch, damage, problem):
    """A damaged cache entry used to be recomputed without a word, or (when it still loaded) scored from."""
    monkeypatch.setenv("UNPAIRED_CACHE", str(tmp_path / "cache"))
    write_synthetic_folder(tmp_path / "data", n_train=4, n_test=5)
    first = train_run(variant(tiny_registry, tmp_path / "data"), RunFolder(tmp_path / "one"), tiny_registry, show_progress=False).result
    entries = sorted((tmp_path / "cache" / "features").glob("*.pt"))
    assert len(entries) == 2
    damage(entries[0])

    TinyExtractor.seen = 0
    with pytest.warns(Notice, match=problem) as warned:
        again = train_run(variant(tiny_registry, tmp_path / "data"), RunFolder(tmp_path / "two"), tiny_registry, show_progress=False).result
    assert str(entries[0]) in str(warned[0].message)
    assert TinyExtractor.seen == 1 + 5 + 10  # only the damaged domain's real features were extracted again
    assert again.metrics == first.metrics
    assert torch.isfinite(torch.load(entries[0])["features"]).all()


def test_a_cache_folder_that_cannot_be_written_costs_the_cache_not_the_scores(tiny_registry, tmp_path, monkeypatch):
    """$UNPAIRED_CACHE naming a file (or a full cache disk) failed the run after it trained, for a cache that only saves time."""
    write_synthetic_folder(tmp_path / "data", n_train=4, n_test=5)
    monkeypatch.setenv("UNPAIRED_CACHE", str(tmp_path / "cache"))
    cached = train_run(variant(tiny_registry, tmp_path / "data"), RunFolder(tmp_path / "one"), tiny_registry, show_progress=False).result
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("UNPAIRED_CACHE", str(tmp_path / "a-file"))
    with pytest.warns(Notice, match=r"the real-image features are not cached \(cannot write .*a-file/features/.*set \$UNPAIRED_CACHE") as told:
        uncached = train_run(variant(tiny_registry, tmp_path / "data"), RunFolder(tmp_path / "two"), tiny_registry, show_progress=False).result
        again = train_run(variant(tiny_registry, tmp_path / "data"), RunFolder(tmp_path / "three"), tiny_registry, show_progress=False).result
    assert uncached.status == "finished" and uncached.metrics == again.metrics == cached.metrics
    assert len([w for w in told if "not cached" in str(w.message)]) == 1  # once, not for each run and direction


def test_running_out_of_memory_while_scoring_names_eval_batch_size_and_the_rerun_only_scores(tiny_registry, tmp_path, monkeypatch):
    """A GPU that trains at batch 1 but cannot score 25 images at once failed the run with torch's words alone."""
    monkeypatch.setenv("UNPAIRED_CACHE", str(tmp_path / "cache"))
    write_synthetic_folder(tmp_path / "data", n_train=4, n_test=5)
    score = Scorer.score

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Scorer, "score", no_memory)
    epochs: list[int] = []
    with tiny_registry.listening(EpochEnds(epochs)):
        failed = train_run(variant(tiny_registry, tmp_path / "data"), RunFolder(tmp_path / "run"), tiny_registry, show_progress=False).result
        assert failed.status == "failed" and failed.error == (
            "TrainingError: out of memory on cpu scoring the generators of epoch 2: lower eval.batch_size (a rerun resumes from the last "
            "checkpoint), or lower data.crop_size (CUDA out of memory. Tried to allocate 2.00 GiB)"
        )
        assert epochs == [1, 2]
        monkeypatch.setattr(Scorer, "score", score)
        rerun = train_run(variant(tiny_registry, tmp_path / "data", batch_size=2), RunFolder(tmp_path / "run"), tiny_registry, show_progress=False)
    assert rerun.result.status == "finished" and "fid_mean" in rerun.result.metrics and epochs == [1, 2]  # no epoch trained again


class EpochEnds:
    def __init__(self, seen: list[int]):
        self.seen = seen

    @hookimpl
    def unpaired_on_epoch_end(self, run, epoch, metrics):
        self.seen.append(epoch)


def test_periodic_evaluation_records_fid_per_epoch_and_keeps_the_best_generators(tiny_registry, tmp_path):
    write_synthetic_folder(tmp_path / "data", n_train=4, n_test=3)
    result = train_run(variant(tiny_registry, tmp_path / "data", every=1), RunFolder(tmp_path / "run"), tiny_registry, show_progress=False).result
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert "fid_mean" in history[0] and "fid_mean" not in history[1]  # the last epoch is scored as the final result
    metrics = result.metrics
    assert metrics["fid_mean_best"] == min(history[0]["fid_mean"], metrics["fid_mean"])
    assert metrics["fid_mean_best_epoch"] in (1, 2)
    assert (tmp_path / "run" / "generators" / "best-AtoB.pt").is_file()


@pytest.mark.slow
def test_score_command_reproduces_the_stored_fid(tmp_path):
    write_synthetic_folder(tmp_path / "data", n_train=4, n_test=4)
    spec = tmp_path / "variant.yaml"
    spec.write_text(
        f"data: {{name: folder, root: {tmp_path / 'data'}, load_size: null, crop_size: 32}}\n"
        "generator: {name: resnet, n_blocks: 1, ngf: 4}\ndiscriminator: {name: patchgan, ndf: 4, n_layers: 2}\n"
        "train: {epochs: 1, decay_epochs: 0, num_workers: 0}\nsamples: 1\n"
    )
    trained = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "--quiet")
    assert trained.returncode == 0, trained.stderr
    stored = json.loads((tmp_path / "run" / "result.json").read_text())["metrics"]
    assert stored["fid_mean"] > 0
    scored = run_cli("score", str(tmp_path / "run"))
    assert scored.returncode == 0, scored.stderr
    assert f"fid_mean {stored['fid_mean']:.4f}" in scored.stdout
    assert json.loads((tmp_path / "run" / "result.json").read_text())["metrics"] == pytest.approx(stored, rel=1e-9)


@pytest.mark.slow
def test_fid_command_between_two_folders(tmp_path):
    write_synthetic_folder(tmp_path / "data", n_train=3, n_test=3)
    same = run_cli("fid", str(tmp_path / "data" / "testA"), str(tmp_path / "data" / "testA"), "--size", "32")
    assert same.returncode == 0, same.stderr
    assert abs(float(same.stdout.split()[1])) < 1e-3
    different = run_cli("fid", str(tmp_path / "data" / "testA"), str(tmp_path / "data" / "testB"), "--size", "32")
    assert float(different.stdout.split()[1]) > 10
    assert different.stderr.startswith("note: Caution: the scores come from 3 test images (the smallest direction), fewer than 2048")
    elsewhere = tmp_path / "elsewhere.pth"  # the extractor's own parameters reach it
    missing = run_cli("fid", str(tmp_path / "data" / "testA"), str(tmp_path / "data" / "testB"), "--param", f"weights={elsewhere}")
    assert missing.returncode != 0 and f"no Inception weights file at {elsewhere}" in missing.stderr
    unknown = run_cli("fid", str(tmp_path / "data" / "testA"), str(tmp_path / "data" / "testB"), "--param", "weight=x")
    assert unknown.returncode == 2 and "--extractor.weight: unknown key; did you mean 'weights'?" in unknown.stderr

    first, second = tmp_path / "data" / "testA", tmp_path / "data" / "testB"
    (first / "cut-short.png").write_bytes((first / "00000.png").read_bytes()[:60])  # a score of fewer images than asked is refused
    (second / "notes.jpg").write_text("not an image")
    unreadable = run_cli("fid", str(first), str(second), "--size", "32")
    assert unreadable.returncode == 1 and "Traceback" not in unreadable.stderr, unreadable.stderr
    assert f"{first}: 1 image(s) cannot be read: {first / 'cut-short.png'} (" in unreadable.stderr
    assert f"{second}: 1 image(s) cannot be read: {second / 'notes.jpg'} (" in unreadable.stderr
    too_small = run_cli("fid", str(first), str(second), "--size", "0")
    assert too_small.returncode == 2 and "argument --size: '0' is not a whole number of at least 1" in too_small.stderr
    nowhere = run_cli("fid", str(first), str(second), "--device", "gpu")
    assert nowhere.returncode == 2 and "argument --device: 'gpu' is not a device: use auto, cpu, cuda, cuda:N or mps" in nowhere.stderr
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "only.png").write_bytes((tmp_path / "data" / "testB" / "00000.png").read_bytes())
    one_image = run_cli("fid", str(alone), str(tmp_path / "data" / "testB"), "--size", "32")
    assert one_image.returncode == 1 and f"{alone} holds 1 image(s); the metrics need at least 2 on each side" in one_image.stderr


def test_preflight_stops_the_study_before_training_when_the_weights_are_missing(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: nofid\nbase:\n  data: {name: synthetic, size: 32, n_train: 2, n_test: 2}\n"
        "  generator: {name: resnet, n_blocks: 1, ngf: 4}\n"
        f"  eval: {{feature_extractor: {{name: inception, weights: {tmp_path / 'missing.pth'}}}}}\n"
    )
    result = run_cli("run", str(study), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert f"no Inception weights file at {tmp_path / 'missing.pth'}" in result.stderr
    assert "UNPAIRED_FID_WEIGHTS=PATH" in result.stderr and "eval.metrics: []" in result.stderr
    assert not list((tmp_path / "out").glob("*/*"))


def test_a_study_with_nothing_left_to_score_checks_its_scores_without_loading_the_extractor(registry, tmp_path, monkeypatch):
    """Running a finished FID study again loaded Inception only to learn its identity (4.5 s of a 12 s no-op): the
    weights' hash says it unbuilt. A run that does score still loads it first, so broken weights stop it before training."""
    study = plan_study({"name": "again", "base": merge(TINY_BASE, {"eval": {"metrics": ["fid"]}}), "tracking": {"enabled": False}}, registry)
    first = run_study(study, tmp_path / "out", registry, study.runs, show_progress=False, announce=lambda _: None)
    assert len(first.done) == 1
    scored = RunFolder(first.done[0].folder).read_result()
    monkeypatch.setattr(FeatureExtractor, "__init__", lambda *args: pytest.fail("the extractor was built"))
    again = run_study(study, tmp_path / "out", registry, study.runs, show_progress=False, announce=lambda _: None)
    assert len(again.skipped) == 1 and not again.done and not again.failed
    assert RunFolder(first.done[0].folder).read_result() == scored

    monkeypatch.undo()
    other_weights = tmp_path / "other.pth"  # other weights: another evaluation, so the run is scored again, loading them
    torch.save({"fc.weight": torch.zeros(2)}, other_weights)
    monkeypatch.setenv("UNPAIRED_FID_WEIGHTS", str(other_weights))
    with pytest.raises(EvaluationError, match="could not be loaded"):
        run_study(study, tmp_path / "out", registry, study.runs, show_progress=False, announce=lambda _: None)
    assert RunFolder(first.done[0].folder).read_result() == scored


class Planted:
    """A pickle that runs code when unpickled: it writes a file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("weights", ["pickle", "not-a-state-dict"])
def test_a_weights_file_that_is_not_a_plain_state_dict_is_refused_by_name_and_runs_no_code(tmp_path, monkeypatch, weights):
    path, marker = tmp_path / "weights.pth", tmp_path / "ran"
    torch.save({"fc.weight": Planted(str(marker))} if weights == "pickle" else [torch.zeros(2)], path)
    choice = Registry.from_entry_points().resolve("feature_extractor", {"name": "inception", "weights": str(path)})
    with pytest.raises(EvaluationError) as error:
        FeatureExtractor(choice, CPU, batch_size=2)
    assert str(path) in str(error.value) and not marker.exists()
    assert ("not a plain weights file" if weights == "pickle" else "holds list, not a state dict") in str(error.value)
    monkeypatch.setenv("UNPAIRED_FID_WEIGHTS", str(path))  # the same through the environment, and by the fid command
    result = run_cli("fid", str(write_synthetic_folder(tmp_path / "a") / "testA"), str(tmp_path / "a" / "testB"))
    assert result.returncode != 0 and str(path) in result.stderr and not marker.exists()


FLAT_DATASET = """
    from PIL import Image
    from pydantic import BaseModel
    from unpaired.plugin_api import Transform, UnpairedData, hookimpl

    class Params(BaseModel):
        brightness: int = 0

    class Flat(UnpairedData):
        '''4 flat grey images per split and domain, lighter with ``brightness``; no describe() of its own.'''

        def __init__(self, params):
            super().__init__(Transform(load_size=None, crop_size=32, crop=False, flip=False))
            self.brightness = params.brightness

        def size(self, split, domain):
            return 4

        def image(self, split, domain, index):
            value = self.brightness + 20 * index + (0 if domain == "A" else 10)
            return Image.new("RGB", (32, 32), (value, value, value))

    @hookimpl
    def unpaired_register_datasets(register):
        register("flat", Flat, Params, "flat grey images")
"""


def test_a_plugin_dataset_without_describe_gets_cached_features_per_parameter_value(make_distribution, tmp_path, monkeypatch):
    """Two datasets differing only in a parameter used to share cached real features, so FID was silently wrong."""
    make_distribution("flat-data", "1.0", {"flat": "flat_data"}, {"flat_data.py": FLAT_DATASET})
    monkeypatch.setenv("UNPAIRED_CACHE", str(tmp_path / "cache"))
    registry = Registry.from_entry_points()
    registry.add_plugin(TinyPlugin(), "tiny", "tests", "0")
    for folder in ("trainA", "trainB", "testA", "testB"):  # the folder dataset the spec starts from, replaced below
        (tmp_path / folder).mkdir()
    seen = []
    for seed, brightness in ((0, 0), (0, 100), (1, 100)):
        spec = variant(registry, tmp_path).as_dict() | {"data": {"name": "flat", "brightness": brightness}}
        spec["train"] |= {"seed": seed}
        TinyExtractor.seen = 0
        result = train_run(resolve_variant(spec, registry), RunFolder(tmp_path / f"run-{seed}-{brightness}"), registry, show_progress=False).result
        assert result.status == "finished", result.error
        seen.append(TinyExtractor.seen)
    assert seen == [1 + 8 + 8, 1 + 8 + 8, 1 + 8]  # new brightness: real features again; the same one again: cached


def test_reading_scores_knows_the_evaluation_without_loading_inception(registry, monkeypatch, tmp_path):
    """compare, the report and plan need the evaluation identity the scores must carry, not the network: Inception says
    its identity (its weights' SHA-256) unbuilt, the same as built; training still loads it, so missing weights stop a run.
    The same weights elsewhere are the same evaluation: a study run with $UNPAIRED_FID_WEIGHTS set and compared without it
    (or on another machine) left every run out as 'scored under another evaluation'."""
    study = {"name": "identity", "base": merge(TINY_BASE, {"eval": {"metrics": ["fid", "kid"]}}), "seeds": [0]}
    runs = plan_study(study, registry, inputs=False).runs
    shared = expected_evaluations(runs)  # UNPAIRED_FID_WEIGHTS: the shared weights
    assert expected_evaluations(runs, load=False) == shared

    copy, other = tmp_path / "elsewhere" / "copy.pth", tmp_path / "other.pth"
    copy.parent.mkdir()
    shutil.copy(FID_WEIGHTS, copy)
    state = torch.load(copy, weights_only=True)
    torch.save({name: tensor.half().float() for name, tensor in state.items()}, other)  # as .gpu/ carries them: rounded
    with monkeypatch.context() as unbuildable:
        unbuildable.setattr(FeatureExtractor, "__init__", lambda *args: pytest.fail("the extractor was built"))
        unbuildable.setenv("UNPAIRED_FID_WEIGHTS", str(copy))
        assert expected_evaluations(runs, load=False) == shared  # the same weights, another path
        unbuildable.setenv("UNPAIRED_FID_WEIGHTS", str(other))
        assert expected_evaluations(runs, load=False) != shared  # other weights, another evaluation, known unbuilt
        unbuildable.setenv("UNPAIRED_FID_WEIGHTS", str(tmp_path / "missing.pth"))
        with pytest.raises(EvaluationError) as unknown:  # compare and the report then say so, and compare unchecked
            expected_evaluations(runs, load=False)
        said = "which inception features made the scores cannot be told here: the Inception weights are not at"
        assert str(unknown.value).startswith(f"{said} {tmp_path / 'missing.pth'} here.")
    monkeypatch.setenv("UNPAIRED_FID_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(EvaluationError, match="could not be loaded"):
        expected_evaluations(runs)


class MissingPackageMetric:
    @hookimpl
    def unpaired_register_metrics(self, register):
        def needs_lpips(params):
            raise ImportError("No module named 'lpips'")

        register("lpips", needs_lpips, TinyParams, "a metric whose package is not installed")


def test_a_metric_that_cannot_be_built_is_named_before_anything_trains(tiny_registry):
    """Whether scoring needs the feature extractor is asked of the built metrics, at planning: a plugin metric whose
    factory fails is then named with its plugin and what to do, not shown as a traceback. So is it where a scorer is built
    without planning (``unpaired score`` of a run folder, ``unpaired fid``)."""
    tiny_registry.add_plugin(MissingPackageMetric(), "lpips", "tests", "0")
    study = {"name": "broken", "base": merge(TINY_BASE, {"eval": {"metrics": ["fid", "lpips"]}}), "seeds": [0]}
    runs = plan_study(study, tiny_registry, inputs=False).runs
    named = (
        "metric 'lpips' of tests 0 could not be built (ImportError: No module named 'lpips'): fix or update its plugin, "
        "or leave it out of eval.metrics"
    )
    with pytest.raises(ComponentError) as error:
        expected_evaluations(runs, load=False)
    assert str(error.value) == named
    with pytest.raises(ComponentError) as error:
        Scorer(runs[0].resolved.eval, torch.device("cpu"))
    assert str(error.value) == named


def test_a_test_split_too_small_for_its_metrics_is_refused_before_training(registry, tmp_path):
    """FID and KID of one test image used to fail after the whole training, as a bare ValueError."""
    from unpaired.execution.runner import check_datasets, open_datasets
    from unpaired.training.run import train_run

    spec = merge(TINY_BASE, {"data": {"n_test": 1}, "eval": {"metrics": ["fid", "kid"]}})
    study = plan_study({"name": "small", "base": spec, "seeds": [0]}, registry, inputs=False)
    broken, _ = check_datasets(study, open_datasets(study))  # what `unpaired validate` reports
    too_few = "the test split has 1 image(s) in a domain, and fid needs at least 2, kid needs at least 2: use more test images, or leave them"
    assert broken == [("variant[base].eval.metrics", f"{too_few} out of eval.metrics")]
    result = train_run(resolve_variant(spec, registry), RunFolder(tmp_path), registry, show_progress=False).result
    assert result.status == "failed" and result.error == f"TrainingError: {broken[0][1]}"
    assert RunFolder(tmp_path).latest_checkpoint() is None  # nothing trained
