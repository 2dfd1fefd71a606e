"""The training loop: the paper's update, schedule, checkpoints, exact resume and failure handling."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, TINY_BASE, AtStep, crash, run_cli, send_sigint, write_synthetic_folder
from unpaired import hookimpl
from unpaired.config.resolved import resolve_variant
from unpaired.config.spec import TrainConfig
from unpaired.config.overrides import merge
from unpaired.errors import InputError
from unpaired.plugin_api.components import LossWeights
from unpaired.plugin_api.registry import Registry
from unpaired.storage.files import atomic_save
from unpaired.storage.records import Checkpoint
from unpaired.plugin_api.lifecycle import RunResult
from unpaired.storage.run_folder import RunFolder
from unpaired.plugin_api.components import TrainingProgress
from unpaired.training.loop import learning_rate
from unpaired.training.parts import build_method
from unpaired.training.progress import Progress, duration
from unpaired.training.run import train_run
from unpaired_plugins.cyclegan import CycleGAN

LOSS_TERMS = CycleGAN.loss_terms
FIRST_STEP = TrainingProgress(epoch=0, step=1, steps_per_epoch=4, total_epochs=4)

CPU = torch.device("cpu")

TINY = merge(
    TINY_BASE,
    {  # what a resume must restore exactly: dropout, a filling image pool, decay, every step logged
        "data": {"n_train": 8},
        "generator": {"dropout": 0.5},
        "image_pool": {"name": "history", "size": 5},
        "train": {"epochs": 2, "decay_epochs": 2, "log_every": 1},
        "samples": 2,
    },
)


def tiny(registry, **changes):
    return resolve_variant(merge(TINY, changes, registry), registry)


def train(variant, out: Path, registry: Registry) -> RunResult:
    return train_run(variant, RunFolder(out), registry, show_progress=False).result


def test_learning_rate_is_constant_then_decays_linearly():
    train = TrainConfig(epochs=100, decay_epochs=100, lr=2e-4)
    assert learning_rate(0, train) == learning_rate(99, train) == 2e-4
    assert learning_rate(100, train) == pytest.approx(2e-4 * 100 / 101)
    assert learning_rate(150, train) == pytest.approx(2e-4 * 50 / 101)
    assert learning_rate(199, train) == pytest.approx(2e-4 / 101)
    assert learning_rate(7, TrainConfig(epochs=10, decay_epochs=0)) == 2e-4


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1, torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1


def step(model, real_A, real_B) -> dict[str, float]:
    """One training step with the variant's own loss weights; its terms as numbers."""
    return {name: value.item() for name, value in model.train_step(real_A, real_B, FIRST_STEP).items()}


def discriminators(model):
    return [model.networks[name] for name in model.discriminators]


def test_progress_is_a_bar_on_a_terminal_and_a_line_per_epoch_in_a_log_file_or_a_worker(capsys, monkeypatch):
    """A run's output redirected to a file (a cluster job's log) held a redrawn bar ten times a second, 175 KB for the
    3-minute quickstart; workers of --jobs showed nothing at all."""
    record = {"epoch": 3, "lr": 2e-4, "G_A": 0.4234, "fid_a2b": 101.5, "epoch_seconds": 100.0, "it_per_s": 1.0}

    def shown(terminal: bool, worker: bool, quiet: bool = False) -> str:
        monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
        monkeypatch.setattr("multiprocessing.parent_process", lambda: object() if worker else None)
        progress = Progress("plain seed 0", total=30000, done=200, shown=not quiet)
        progress.step({"G_A": 0.5})
        progress.epoch_end(30, 300, record)
        progress.close()
        return capsys.readouterr().err

    line = "plain seed 0: epoch 3/30, step 300/30000, 1.0 it/s, 8 h 15 min left; lr=0.0002 G_A=0.423 fid_a2b=102\n"
    assert shown(terminal=False, worker=False) == line and shown(terminal=True, worker=True) == line
    assert shown(terminal=False, worker=False, quiet=True) == ""
    bar = shown(terminal=True, worker=False)
    assert "\rplain seed 0:" in bar and "201/30000" in bar and "G_A=0.5" in bar and "epoch 3/30" not in bar
    assert [duration(s) for s in (0.4, 59, 61, 3599, 3600 * 5 + 65, float("inf"))] == ["0 s", "59 s", "1 min", "1 h 00 min", "5 h 01 min", "?"]

    def closed_terminal(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setattr(sys.stderr, "write", closed_terminal)  # its terminal hung up, mid-line: the line is lost, not the run
    Progress("plain seed 0", total=30000, done=200, shown=True).epoch_end(30, 300, record)


def test_generator_step_gives_discriminators_no_gradient_and_vice_versa(registry):
    model = build_method(tiny(registry), CPU, 32)
    real_A, real_B = batch()
    fake_A, fake_B, _ = model.generator_step(real_A, real_B, LossWeights(1.0, 10.0, 5.0))
    assert all(p.grad is None for d in discriminators(model) for p in d.parameters())
    g_grads = [p.grad.clone() for name in ("G_AB", "G_BA") for p in model.networks[name].parameters()]
    assert all(g.abs().sum() > 0 for g in g_grads)
    assert all(p.requires_grad for d in discriminators(model) for p in d.parameters())
    model.discriminator_step(real_A, real_B, fake_A, fake_B)
    assert all(p.grad is not None for d in discriminators(model) for p in d.parameters())
    after = [p.grad for name in ("G_AB", "G_BA") for p in model.networks[name].parameters()]
    assert all(torch.equal(a, b) for a, b in zip(g_grads, after))


def test_loss_terms_follow_the_paper(registry):
    variant = tiny(registry, generator={"dropout": 0.0}, image_pool={"name": "none"})
    model = build_method(variant, CPU, 32)
    G_AB, G_BA, D_A, D_B = (copy.deepcopy(model.networks[n]) for n in ("G_AB", "G_BA", "D_A", "D_B"))
    real_A, real_B = batch(1)
    terms = step(model, real_A, real_B)
    with torch.no_grad():
        fake_B, fake_A = G_AB(real_A), G_BA(real_B)
        mse_to = lambda pred, label: F.mse_loss(pred, torch.full_like(pred, label)).item()  # noqa: E731
        expected = {
            "G_adv_A": mse_to(D_A(fake_A), 1.0),
            "G_adv_B": mse_to(D_B(fake_B), 1.0),
            "cycle_A": 10 * F.l1_loss(G_BA(fake_B), real_A).item(),
            "cycle_B": 10 * F.l1_loss(G_AB(fake_A), real_B).item(),
            "idt_A": 5 * F.l1_loss(G_BA(real_A), real_A).item(),
            "idt_B": 5 * F.l1_loss(G_AB(real_B), real_B).item(),
            "D_A": 0.5 * (mse_to(D_A(real_A), 1.0) + mse_to(D_A(fake_A), 0.0)),
            "D_B": 0.5 * (mse_to(D_B(real_B), 1.0) + mse_to(D_B(fake_B), 0.0)),
            "D_reg_A": 0.0,
            "D_reg_B": 0.0,
        }
    assert terms == pytest.approx(expected, rel=1e-5)


def test_a_relativistic_loss_gets_the_real_scores_in_the_generator_step_and_trains(registry, tmp_path):
    variant = tiny(registry, gan_loss={"name": "ralsgan"}, generator={"dropout": 0.0}, image_pool={"name": "none"})
    model = build_method(variant, CPU, 32)
    G_AB, D_B = copy.deepcopy(model.networks["G_AB"]), copy.deepcopy(model.networks["D_B"])
    real_A, real_B = batch(3)
    terms = step(model, real_A, real_B)
    with torch.no_grad():
        judged_fake, judged_real = D_B(G_AB(real_A)), D_B(real_B)
        expected = ((judged_fake - judged_real.mean() - 1) ** 2).mean() + ((judged_real - judged_fake.mean() + 1) ** 2).mean()
    assert terms["G_adv_B"] == pytest.approx(expected.item(), rel=1e-5)
    result = train(variant, tmp_path, registry)
    assert result.status == "finished" and all(abs(v) < 1e3 for v in result.final_losses.values())


def test_a_regulariser_is_logged_as_its_own_unhalved_term(registry):
    variant = tiny(registry, gan_loss={"name": "wgangp"}, generator={"dropout": 0.0}, image_pool={"name": "none"})
    model = build_method(variant, CPU, 32)
    G_BA, D_A = copy.deepcopy(model.networks["G_BA"]), copy.deepcopy(model.networks["D_A"])
    real_A, real_B = batch(4)
    torch.manual_seed(7)  # the penalty's interpolation is the only random draw of the step; D_A's comes first
    terms = step(model, real_A, real_B)
    fake_A = G_BA(real_B).detach()
    with torch.no_grad():
        assert terms["D_A"] == pytest.approx(0.5 * (D_A(fake_A).mean() - D_A(real_A).mean()).item(), rel=1e-5)
    torch.manual_seed(7)
    penalty = registry.build("gan_loss", {"name": "wgangp"}).regularizer(D_A, real_A, fake_A)
    assert terms["D_reg_A"] == pytest.approx(penalty.item(), rel=1e-5) and terms["D_reg_A"] > 0 and terms["D_reg_B"] > 0


class WarmUp:
    """A loss-weight schedule whose adversarial weight rises over the first 6 steps, recording what it is asked."""

    def __init__(self):
        self.asked = []

    @hookimpl
    def unpaired_register_loss_weights(self, register):
        from unpaired.plugin_api import LossWeights, LossWeightSchedule
        from unpaired_plugins.loss_weights import ConstantParams

        outer = self

        class Ramp(LossWeightSchedule):
            def __init__(self, params):
                pass

            def at(self, epoch, total_epochs):
                return LossWeights(1.0, 10.0, 5.0)

            def at_step(self, progress):
                outer.asked.append((progress.epoch, progress.step, round(progress.fraction, 4)))
                return LossWeights(min(1.0, progress.step / 6), 10.0, 5.0)

        register("ramp", Ramp, ConstantParams, "warm-up")


def test_a_loss_weight_schedule_can_change_within_an_epoch(tmp_path):
    registry = Registry.from_entry_points()
    warm_up = WarmUp()
    registry.add_plugin(warm_up, "ramp", "tests", "0")
    logged = []

    class Record:
        @hookimpl
        def unpaired_on_step(self, run, epoch, step, losses, lr):
            logged.append(losses["G_adv_A"])

    with registry.listening(Record()):
        assert train(tiny(registry, loss_weights={"name": "ramp"}, train={"epochs": 1, "decay_epochs": 1}), tmp_path, registry).status == "finished"
    assert [(e, s) for e, s, _ in warm_up.asked] == [(e, s) for s in range(1, 17) for e in [(s - 1) // 8]]
    assert warm_up.asked[7][2] == 0.5 and warm_up.asked[-1][2] == 1.0
    assert logged[0] < logged[5] / 3  # the logged term carries its weight: 1/6 at the first step


def test_each_discriminator_has_its_own_gan_loss_instance(registry):
    model = build_method(tiny(registry), CPU, 32)
    assert model.gan_loss_A is not model.gan_loss_B and type(model.gan_loss_A) is type(model.gan_loss_B)


def count_generator_images(model) -> dict[str, int]:
    """Images each generator is given per call, recorded by forward hooks."""
    seen = {"G_AB": [], "G_BA": []}
    for name, sizes in seen.items():
        model.networks[name].register_forward_hook(lambda module, inputs, output, sizes=sizes: sizes.append(len(inputs[0])))
    return seen


def test_identity_loss_is_skipped_when_its_weight_is_zero(registry):
    model = build_method(tiny(registry), CPU, 32)
    seen = count_generator_images(model)
    real_A, real_B = batch()
    terms = {name: value.item() for name, value in model.generator_step(real_A, real_B, LossWeights(1.0, 10.0, 0.0))[2].items()}
    assert terms["idt_A"] == terms["idt_B"] == 0.0
    assert sum(seen["G_AB"]) == sum(seen["G_BA"]) == 2 * len(real_A)  # a fake and a cycle each
    seen["G_AB"].clear(), seen["G_BA"].clear()
    step(model, real_A, real_B)
    assert sum(seen["G_AB"]) == sum(seen["G_BA"]) == 3 * len(real_A)  # and an identity each


def test_per_image_norms_share_calls_and_give_the_same_update_as_separate_calls(registry):
    """Instance norm: the six generator passes run as three calls (2 + 3 + 1 batches of images) and each
    discriminator judges real and fake in one call; losses and gradients equal one call per image to
    rounding (1e-5 of the network's largest gradient entry). Gradients, not updated weights: Adam turns the
    ~1e-9 rounding noise in the gradient of a bias that instance norm cancels into steps of up to lr."""
    variant = tiny(registry, generator={"dropout": 0.0})
    models = [build_method(variant, CPU, 32) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    models[1].batch_generator_calls = models[1].batch_discriminator_calls = False
    seen = [count_generator_images(model) for model in models]
    real_A, real_B = batch(2)
    terms = [step(model, real_A, real_B) for model in models]
    n = len(real_A)
    assert seen[0] == {"G_AB": [2 * n, n], "G_BA": [3 * n]}
    assert seen[1] == {"G_AB": [n, n, n], "G_BA": [n, n, n]}
    torch.testing.assert_close(terms[0], terms[1], rtol=1e-5, atol=1e-6)
    for name, net in models[0].networks.items():
        scale = max(p.grad.abs().max() for p in net.parameters())
        for (key, a), b in zip(net.named_parameters(), models[1].networks[name].parameters()):
            assert (a.grad - b.grad).abs().max() <= 1e-5 * scale, f"{name}.{key}"


def test_a_training_step_reads_nothing_back_to_the_host(registry, monkeypatch):
    """On a GPU, .item(), .tolist(), .cpu(), .numpy() and bool/float/int of a tensor wait for the device.
    The project's code must not call them inside a step (losses are read only at log points)."""
    model = build_method(tiny(registry, image_pool={"name": "history", "size": 1}), CPU, 32)
    ours = (str(REPO / "unpaired"), str(REPO / "plugins"))
    calls = []

    def spy(name, original):
        def recording(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(ours):
                calls.append(f"{name} at {caller.f_code.co_filename}:{caller.f_lineno}")
            return original(self, *args, **kwargs)

        return recording

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    for seed in range(4):  # the pool fills, then swaps
        model.train_step(*batch(seed), FIRST_STEP)
    assert calls == []
    # the spy does see such calls, implicit ones included, made from the project's files
    exec(compile("bool(flag) and flag.item()", ours[0] + "/engine.py", "exec"), {"flag": torch.ones(())})
    assert [call.split(" at ")[0] for call in calls] == ["__bool__", "item"]


def test_batch_norm_keeps_one_call_per_image(registry):
    model = build_method(tiny(registry, generator_norm={"name": "batch"}, discriminator_norm={"name": "batch"}), CPU, 32)
    seen = count_generator_images(model)
    real_A, real_B = batch()
    step(model, real_A, real_B)
    assert seen == {"G_AB": [len(real_A)] * 3, "G_BA": [len(real_A)] * 3}


def final_state(out: Path) -> Checkpoint:
    return RunFolder(out).load_checkpoint()


def losses(out: Path) -> list[dict]:
    history = json.loads((out / "history.json").read_text())
    return [{k: row[k] for k in ("epoch", "lr", *LOSS_TERMS)} for row in history]


def assert_same_training(a: Path, b: Path) -> None:
    first, second = final_state(a), final_state(b)
    for name, weights in first.model["networks"].items():
        for key, tensor in weights.items():
            assert torch.equal(tensor, second.model["networks"][name][key]), f"{name}.{key} differs"
    assert losses(a) == losses(b)
    assert first.state.global_step == second.state.global_step == 32


class CrashAfterEpoch:
    def __init__(self, epoch):
        self.epoch = epoch

    @hookimpl
    def unpaired_on_epoch_end(self, run, epoch, metrics):
        if epoch == self.epoch:
            crash()


def test_resume_after_a_crash_at_an_epoch_boundary_is_exact(registry, tmp_path):
    variant = tiny(registry)
    train(variant, tmp_path / "straight", registry)

    with registry.listening(CrashAfterEpoch(2)):
        crashed = train(variant, tmp_path / "resumed", registry)
    assert crashed.status == "failed" and crashed.error == "RuntimeError: simulated crash"
    assert RunFolder(tmp_path / "resumed").read_result() == crashed
    assert "simulated crash" in (tmp_path / "resumed" / "error.txt").read_text()
    assert final_state(tmp_path / "resumed").state.epoch == 2
    result = train(variant, tmp_path / "resumed", registry)
    assert result.status == "finished" and result.epochs == 4
    assert not (tmp_path / "resumed" / "error.txt").exists()  # the failed attempt's error went with its result
    assert_same_training(tmp_path / "straight", tmp_path / "resumed")


def test_sigint_mid_epoch_checkpoints_and_resume_is_exact(registry, tmp_path):
    variant = tiny(registry)
    train(variant, tmp_path / "straight", registry)
    with registry.listening(AtStep(11, send_sigint)):
        interrupted = train(variant, tmp_path / "resumed", registry)
    assert interrupted.status == "interrupted" and "rerun to resume" in interrupted.error
    state = final_state(tmp_path / "resumed").state
    assert (state.epoch, state.step_in_epoch, state.global_step) == (1, 3, 11)
    train(variant, tmp_path / "resumed", registry)
    assert_same_training(tmp_path / "straight", tmp_path / "resumed")


def test_a_finished_variant_is_not_trained_again(registry, tmp_path):
    variant = tiny(registry, train={"epochs": 1, "decay_epochs": 0})
    first = train(variant, tmp_path, registry)
    steps = []

    class Count:
        @hookimpl
        def unpaired_on_step(self, run, epoch, step, losses, lr):
            steps.append(step)

    with registry.listening(Count()):
        again = train_run(variant, RunFolder(tmp_path), registry, show_progress=False)
    assert again.outcome == "skipped" and again.result.model_dump() == first.model_dump()
    assert steps == []


def test_another_variant_in_the_same_folder_is_refused(registry, tmp_path):
    """A finished run's record is never replaced by another run's failure (``unpaired train --out`` a folder in use)."""
    first = train(tiny(registry, train={"epochs": 1, "decay_epochs": 0}), tmp_path, registry)
    finished = (tmp_path / "result.json").read_bytes()
    other = tiny(registry, train={"epochs": 1, "decay_epochs": 0, "seed": 1})
    refused = train_run(other, RunFolder(tmp_path), registry, show_progress=False).result
    assert refused.status == "failed" and refused.error == (
        f"TrainingError: {tmp_path} holds the finished run {first.run_id}, not this one ({other.run_id}): train into another "
        "folder, or delete that one first"
    )
    assert (tmp_path / "result.json").read_bytes() == finished and not (tmp_path / "error.txt").exists()
    (tmp_path / "result.json").unlink()  # unfinished, only its checkpoints tell whose folder it is
    refused = train(tiny(registry, train={"epochs": 1, "decay_epochs": 0, "seed": 1}), tmp_path, registry)
    assert refused.status == "failed" and refused.error.startswith("TrainingError: ")
    assert "holds checkpoints of another variant" in refused.error


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(registry, tmp_path, monkeypatch):
    train(tiny(registry, train={"epochs": 1, "decay_epochs": 0}), tmp_path, registry)
    previous = RunFolder(tmp_path).latest_checkpoint()
    before = previous.read_bytes()

    def dying_save(state, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"x": 1}, previous)
    assert previous.read_bytes() == before
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [previous.name]
    assert Checkpoint.read(previous).state.epoch == 1


class NanAfter:
    """An LSGAN whose generator loss turns NaN after ``n`` calls."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    @hookimpl
    def unpaired_register_gan_losses(self, register):
        from unpaired_plugins.gan_losses import LabelParams, LeastSquares

        outer = self

        class Flaky(LeastSquares):
            def generator_loss(self, fake_pred):
                outer.calls += 1
                loss = super().generator_loss(fake_pred)
                return loss * float("nan") if outer.calls > outer.n else loss

        register("flaky", Flaky, LabelParams, "turns NaN")


def test_a_non_finite_loss_stops_the_variant_naming_term_step_and_epoch(tmp_path):
    registry = Registry.from_entry_points()
    # one generator_loss call by the contract probe, then two per step: NaN from step 12
    registry.add_plugin(NanAfter(1 + 2 * 11), "nan", "tests", "0")
    variant = tiny(registry, gan_loss={"name": "flaky"}, train={"log_every": 4})
    result = train(variant, tmp_path, registry)
    assert result.status == "failed" and result.error.startswith("TrainingError: ")
    assert "loss G_adv_A became non-finite at step 12 (epoch 2, step 4 of that epoch)" in result.error
    assert "the last good checkpoint is" in result.error and "epoch-0001-step-000000008.pt" in result.error
    assert RunFolder(tmp_path).latest_checkpoint().name == "epoch-0001-step-000000008.pt"
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("gain", [1e30, 1e20])
def test_an_initial_gain_so_large_that_the_networks_overflow_is_named_not_blamed_on_their_plugins(registry, tmp_path, gain):
    """Finite weights whose outputs overflow (validation refuses a gain past float32's range): the spec is at fault, and
    the error says so instead of naming the discriminator or generator as breaking its contract."""
    result = train(tiny(registry, train={"init_gain": gain}), tmp_path, registry)
    assert result.status == "failed" and result.error.startswith(f"TrainingError: train.init_gain {gain:g} (train.init normal) makes the ")
    assert "lower train.init_gain" in result.error and "must give" not in result.error


HOST_OUT_OF_MEMORY = RuntimeError(
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 402653184 bytes."
)  # what torch 2.14 raised for a 4096 px synthetic run on this machine, as a RuntimeError


@pytest.mark.parametrize(
    ("data", "hint", "error"),
    [
        ({}, "lower data.size", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")),
        ({"name": "folder"}, "lower data.crop_size", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")),
        ({}, "lower data.size", HOST_OUT_OF_MEMORY),
    ],
)
def test_out_of_memory_suggests_what_to_change(registry, tmp_path, monkeypatch, data, hint, error):
    """The dataset says which of its parameters shrinks the images; the host's memory running out is told the same way."""

    def no_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(CycleGAN, "train_step", no_memory)
    if data:
        data = {"name": "folder", "root": str(write_synthetic_folder(tmp_path / "data")), "load_size": None, "crop_size": 32}
    result = train(tiny(registry, data=data), tmp_path / "run", registry)
    assert result.status == "failed"
    assert f"out of memory on cpu at epoch 1: {hint}, lower train.batch_size, or set train.precision: bf16" in result.error


def test_networks_too_large_to_build_are_told_as_such(registry, tmp_path, monkeypatch):
    """discriminator.ndf: 100000 asked the host for 1.2 TB and failed the run with torch's RuntimeError alone."""

    def no_memory(*args, **kwargs):
        raise HOST_OUT_OF_MEMORY

    monkeypatch.setattr("unpaired.training.loop.build_method", no_memory)
    result = train(tiny(registry), tmp_path / "run", registry)
    assert result.status == "failed" and result.error.startswith(
        "TrainingError: out of memory on cpu building the networks and trying them on two images: use smaller networks "
        "(their widths: generator.ngf, discriminator.ndf for the built-in ones) or lower data.size ([enforce fail"
    )


@pytest.mark.parametrize(
    ("command", "patched", "hint"),
    [
        (
            ["translate", "in", "--checkpoint", "run", "--out", "out", "--size", "8192"],
            "unpaired.tools.translate.load_generator",
            "use a smaller --size, or a device with more memory (--device)",
        ),
        (
            ["fid", "a", "b", "--size", "8192"],
            "unpaired.evaluation.features.folder_images",
            "use a smaller --size or --batch-size, or a device with more memory (--device)",
        ),
        (["score", "runs/x"], "unpaired.devices.pick_device", "use a device with more memory (--device)"),
    ],
)
@pytest.mark.parametrize("error", [HOST_OUT_OF_MEMORY, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_a_command_that_runs_out_of_memory_says_which_of_its_options_to_lower(monkeypatch, capsys, command, patched, hint, error):
    """``translate --size 8192`` under a memory limit printed torch's traceback and called it a bug in unpaired."""
    from unpaired.cli import main

    def no_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(patched, no_memory)
    assert main(command) == 1
    assert capsys.readouterr().err == f"error: out of memory: {hint} ({str(error).splitlines()[0]})\n"


@pytest.mark.slow
def test_a_64px_run_visibly_learns(registry, tmp_path):
    variant = tiny(
        registry,
        data={"size": 64, "n_train": 30},
        generator={"n_blocks": 3, "ngf": 16, "dropout": 0.0},
        discriminator={"ndf": 16, "n_layers": 3},
        train={"epochs": 3, "decay_epochs": 1, "lr": 5e-4, "log_every": 1},
    )
    first_steps = []

    class Record:
        @hookimpl
        def unpaired_on_step(self, run, epoch, step, losses, lr):
            if step <= 3:
                first_steps.append(losses["cycle_A"] + losses["cycle_B"])

    with registry.listening(Record()):
        train(variant, tmp_path, registry)
    last = losses(tmp_path)[-1]
    assert (last["cycle_A"] + last["cycle_B"]) < 0.6 * (sum(first_steps) / 3)  # measured: 0.48


def test_train_and_translate_from_the_command_line(tmp_path):
    spec = tmp_path / "variant.yaml"
    spec.write_text(
        "data: {name: synthetic, size: 32, n_train: 4, n_test: 2}\n"
        "generator: {name: resnet, n_blocks: 1, ngf: 4}\n"
        "discriminator: {name: pooled, ndf: 4, n_layers: 2}\n"
        "train: {epochs: 1, decay_epochs: 1, num_workers: 0}\n"
        "eval: {metrics: []}\n"
    )
    result = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "finished"
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints",
        "generators",
        "history.csv",
        "history.json",
        "result.json",
        "samples",
        "showcase.pt",
        "spec.json",
    ]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch-0001.png", "epoch-0002.png"]
    assert (run / "history.csv").read_text().splitlines()[0] == "epoch,lr," + ",".join(LOSS_TERMS) + ",epoch_seconds,it_per_s"
    study_out = tmp_path / "study_out"
    study_out.mkdir()
    (study_out / "study.json").write_text("{}")
    into_a_study = run_cli("train", str(spec), "--out", str(study_out))
    assert into_a_study.returncode == 2 and f"--out {study_out} is a study's output folder" in into_a_study.stderr
    assert sorted(p.name for p in study_out.iterdir()) == ["study.json"]
    (study_out / "base").mkdir()
    into_a_variant = run_cli("train", str(spec), "--out", str(study_out / "base"))
    assert into_a_variant.returncode == 2 and f"is in the study output folder {study_out}, where its variant folders go" in into_a_variant.stderr
    assert not list((study_out / "base").iterdir())
    compared = run_cli("compare", str(run))  # one run is no study: said so, whatever MLflow holds
    assert compared.returncode == 2 and f"{run} is a folder but not a study output folder (it has no study.json" in compared.stderr

    run_cli("data", "export", "synthetic", str(tmp_path / "syn"), "size=32", "n_train=1", "n_test=3")
    out = tmp_path / "translated"
    result = run_cli("translate", "--checkpoint", str(run / "generators" / "AtoB.pt"), str(tmp_path / "syn" / "testA"), "--out", str(out))
    assert result.returncode == 0, result.stderr  # an exported generator knows its direction
    assert "wrote 3 image(s) to" in result.stdout and "translated AtoB at 32 px" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    inputs = tmp_path / "syn" / "testA"
    before = {path: path.read_bytes() for path in inputs.iterdir()}
    onto_inputs = run_cli("translate", "--checkpoint", str(run / "generators" / "AtoB.pt"), str(inputs), "--out", str(inputs))
    assert onto_inputs.returncode == 2 and "the translations would replace 3 input image(s) (" in onto_inputs.stderr
    assert {path: path.read_bytes() for path in inputs.iterdir()} == before  # nothing of the user's lost
    onto_a_file = run_cli("translate", "--checkpoint", str(run / "generators" / "AtoB.pt"), str(inputs), "--out", str(spec))
    assert onto_a_file.returncode == 2 and f"--out {spec} cannot be made: it is a file; name a folder" in onto_a_file.stderr
    (checkpoint,) = (run / "checkpoints").glob("*.pt")
    unsaid = run_cli("translate", "--checkpoint", str(checkpoint), str(tmp_path / "syn" / "testA"), "--out", str(out))
    assert unsaid.returncode == 2 and "holding the generators of AtoB and BtoA: choose one (--direction)" in unsaid.stderr
    from_folder = run_cli("translate", "--checkpoint", str(run), str(tmp_path / "syn" / "testB"), "--direction", "BtoA", "--out", str(tmp_path / "b"))
    assert from_folder.returncode == 0 and "translated BtoA at 32 px" in from_folder.stdout, from_folder.stderr  # its final generator
    unsaid = run_cli("translate", "--checkpoint", str(run), str(tmp_path / "syn" / "testA"), "--out", str(out))
    assert unsaid.returncode == 2 and f"{run} is a run folder holding the generators of AtoB and BtoA: choose one (--direction)" in unsaid.stderr
    unfinished = run_cli("translate", "--checkpoint", str(tmp_path / "syn"), str(tmp_path / "syn" / "testA"), "--out", str(out))
    assert unfinished.returncode == 2 and "is a folder without final generators (generators/AtoB.pt, BtoA.pt)" in unfinished.stderr
    from PIL import Image

    assert Image.open(out / "00000.png").size == (32, 32)
    Image.open(inputs / "00000.png").resize((51, 30)).save(tmp_path / "wide.png")  # translate squashed it to a square
    kept = run_cli("translate", "--checkpoint", str(run), str(tmp_path / "wide.png"), "--direction", "AtoB", "--out", str(out), "--keep-aspect")
    assert kept.returncode == 0 and "translated AtoB at 32 px on the shorter side, aspect ratios kept" in kept.stdout, kept.stderr
    assert Image.open(out / "wide.png").size == (54, 32)  # 51 x 30 at 32 px high; its translation padded to 56 x 32


class Needs16(torch.nn.Module):
    """A generator whose four halvings and doublings give back its input's size only for sides that are multiples of 16."""

    def __init__(self):
        super().__init__()
        self.down = torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 2, stride=2) for _ in range(4)])
        self.up = torch.nn.Sequential(*[torch.nn.ConvTranspose2d(3, 3, 2, stride=2) for _ in range(4)])

    def forward(self, x):
        return torch.tanh(self.up(self.down(x)))


def test_translating_at_the_aspect_ratio_pads_to_the_multiple_the_generator_needs_and_crops_back(tmp_path):
    from PIL import Image

    from unpaired.tools.translate import _Fitted, translate

    image = torch.rand(1, 3, 37, 50) * 2 - 1
    fitted = _Fitted(Needs16().eval())
    with torch.no_grad():
        translated = fitted(image)
        padded = F.pad(image, (0, 14, 0, 11), mode="replicate")  # to 48 x 64
        assert translated.shape == image.shape and fitted.multiple == 16 and torch.equal(translated, fitted.generator(padded)[..., :37, :50])
    Image.new("RGB", (300, 100)).save(tmp_path / "wide.png")
    Image.new("RGB", (10_000, 10)).save(tmp_path / "banner.png")
    written, skipped = translate(Needs16().eval(), [tmp_path / "wide.png", tmp_path / "banner.png"], tmp_path / "out", 40, torch.device("cpu"), True)
    assert [Image.open(path).size for path in written] == [(120, 40)]
    assert skipped == [f"{tmp_path / 'banner.png'}: at 40 px on its shorter side, 10000x10 px would be over 8192 px long"]
    with pytest.raises(InputError, match=r"^the generator translates no 50x37 px image .* of its size \(at 256 px: RuntimeError: .*\): translate"):
        _Fitted(Needs16().double())(image)  # a failure that no padding mends is named, not taken for a size problem


def test_cli_reports_spec_errors_with_exit_code_2(tmp_path):
    spec = tmp_path / "variant.yaml"
    spec.write_text("data: {name: synthetic}\ngenerator: {name: resnet, n_blocks: 0}\n")
    result = run_cli("train", str(spec), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert f"error: {spec}: 1 problem:\n  generator.n_blocks: Input should be greater than or equal to 1 (got 0)" in result.stderr


def test_bf16_autocast_losses_track_fp32(registry, tmp_path):
    """bf16 keeps 8 mantissa bits: over a short run every epoch-mean loss stays within 5% (or 0.01) of fp32's."""

    def history(precision):
        out = tmp_path / precision
        variant = tiny(registry, generator={"dropout": 0.0, "ngf": 8}, train={"epochs": 2, "decay_epochs": 0, "precision": precision})
        train(variant, out, registry)
        return losses(out)

    for fp32, bf16 in zip(history("fp32"), history("bf16")):
        for term in LOSS_TERMS:
            assert bf16[term] == pytest.approx(fp32[term], rel=0.05, abs=0.01), term
