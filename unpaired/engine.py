"""One variant's CycleGAN training loop: networks from the registry, the paper's two-step update,
checkpoints that hold all state, exact resume.

Loss terms are named by the domain of the image judged or reconstructed:
``G_adv_A`` is the adversarial loss of G_BA (its fakes are judged by D_A), ``cycle_A`` is
|G_BA(G_AB(A)) - A|, ``idt_A`` is |G_BA(A) - A|, ``D_A`` is D_A's loss on real A vs pooled
fake A. Logged values are weighted as in the total the optimiser sees; ``D_*`` include the 0.5.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from unpaired.checkpoint import (
    atomic_save,
    atomic_write_text,
    capture_rng,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    remove_older_checkpoints,
    restore_rng,
)
from unpaired.components import LossWeights
from unpaired.data import EpochOrder, TestImages, TrainPairs, UnpairedData, save_grid
from unpaired.evaluate import FeatureExtractor, build_extractor, score_generators
from unpaired.registry import Registry
from unpaired.spec import ResolvedVariant, TrainConfig
from unpaired.weight_init import init_weights

LOSS_TERMS = ("G_adv_A", "G_adv_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B")
CHECKPOINT_FORMAT = 1
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RuntimeError):
    """Training of a variant stopped; the message says why and what to do."""


class TrainingInterrupted(TrainingError):
    """SIGINT or SIGTERM arrived; a checkpoint was written and a rerun resumes from it."""


@dataclass(frozen=True)
class RunInfo:
    """What lifecycle hooks are told about the run."""

    variant_id: str
    out_dir: Path
    spec: dict[str, Any]


def learning_rate(epoch: int, train: TrainConfig) -> float:
    """Learning rate during 0-based ``epoch``: ``lr`` for ``epochs`` epochs, then linear decay as in
    the paper's code, ``lr * (1 - (epoch + 1 - epochs) / (decay_epochs + 1))``, which would reach 0
    one epoch after the last."""
    decayed = max(0, epoch + 1 - train.epochs)
    return train.lr * (1.0 - decayed / (train.decay_epochs + 1))


def pick_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU, else Apple MPS, else the CPU; otherwise the named device (checked)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device is {name!r} but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainingError(f"train.device is {name!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError("train.device is 'mps' but MPS is not available; use 'auto' or 'cpu'")
    return device


class CycleGAN:
    """Two generators, two discriminators, their optimisers, image pools and losses, and the update step."""

    def __init__(self, variant: ResolvedVariant, registry: Registry, device: torch.device):
        components, train = variant.components, variant.spec.train
        self.device, self.train_config = device, train
        self.channels_last = train.channels_last
        generator_norm = registry.build("norm", components["generator_norm"])
        discriminator_norm = registry.build("norm", components["discriminator_norm"])
        self.networks: dict[str, nn.Module] = {
            "G_AB": registry.build("generator", components["generator"], generator_norm),
            "G_BA": registry.build("generator", components["generator"], generator_norm),
            "D_A": registry.build("discriminator", components["discriminator"], discriminator_norm),
            "D_B": registry.build("discriminator", components["discriminator"], discriminator_norm),
        }
        for network in self.networks.values():
            init_weights(network, train.init, train.init_gain)
            network.to(device, memory_format=torch.channels_last if train.channels_last else torch.preserve_format)
        run = {name: torch.compile(net) if train.compile else net for name, net in self.networks.items()}
        self.G_AB, self.G_BA, self.D_A, self.D_B = run["G_AB"], run["G_BA"], run["D_A"], run["D_B"]

        adam = {"lr": train.lr, "betas": train.betas, **({"fused": True} if device.type == "cuda" else {"foreach": True})}
        self.opt_G = torch.optim.Adam(itertools.chain(self.networks["G_AB"].parameters(), self.networks["G_BA"].parameters()), **adam)
        self.opt_D = torch.optim.Adam(itertools.chain(self.networks["D_A"].parameters(), self.networks["D_B"].parameters()), **adam)
        self.pool_A = registry.build("image_pool", components["image_pool"], train.seed * 2)
        self.pool_B = registry.build("image_pool", components["image_pool"], train.seed * 2 + 1)
        self.gan_loss = registry.build("gan_loss", components["gan_loss"])
        self.autocast_dtype = _DTYPES[train.precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=train.precision == "fp16")
        self.batch_generator_calls, self.batch_discriminator_calls = generator_norm.per_image, discriminator_norm.per_image
        self.first_bad_step = torch.full((len(LOSS_TERMS),), -1, dtype=torch.long, device=device)
        self.step_counter = torch.zeros((), dtype=torch.long, device=device)

    def discriminators(self) -> list[nn.Module]:
        return [self.networks["D_A"], self.networks["D_B"]]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def set_learning_rate(self, lr: float) -> None:
        for optimizer in (self.opt_G, self.opt_D):
            for group in optimizer.param_groups:
                group["lr"] = lr

    def to_device(self, images: Tensor) -> Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    @staticmethod
    def forward_each(network: nn.Module, *images: Tensor, batched: bool) -> tuple[Tensor, ...]:
        """``network(x)`` for each of ``images``. ``batched``: in one call on the images stacked into one
        batch, which gives the same results (up to rounding) when the network's norm is per-image,
        and is faster (fewer, larger kernels)."""
        if batched and len(images) > 1:
            return network(torch.cat(images)).split([len(image) for image in images])
        return tuple(network(image) for image in images)

    def generator_step(self, real_A: Tensor, real_B: Tensor, weights: LossWeights) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Update both generators on adversarial + cycle (+ identity, when its weight > 0) losses.
        The discriminators get no gradient. Returns the detached fakes (A, B) and the six weighted terms."""
        for network in self.discriminators():
            network.requires_grad_(False)
        identity, batched = weights.identity > 0, self.batch_generator_calls
        keep_B, keep_A = ([real_B], [real_A]) if identity else ([], [])  # a generator given its target domain should change nothing
        with self.autocast():  # three calls: fakes, identities and a cycle share batches where the norm allows
            fake_B, *same_B = self.forward_each(self.G_AB, real_A, *keep_B, batched=batched)
            fake_A, *same_A, cycled_A = self.forward_each(self.G_BA, real_B, *keep_A, fake_B, batched=batched)
            (cycled_B,) = self.forward_each(self.G_AB, fake_A, batched=batched)
            terms = [
                weights.adversarial * self.gan_loss.generator_loss(self.D_A(fake_A)),
                weights.adversarial * self.gan_loss.generator_loss(self.D_B(fake_B)),
                weights.cycle * F.l1_loss(cycled_A, real_A),
                weights.cycle * F.l1_loss(cycled_B, real_B),
            ]
            if identity:
                terms += [weights.identity * F.l1_loss(same_A[0], real_A), weights.identity * F.l1_loss(same_B[0], real_B)]
            else:
                terms += [real_A.new_zeros(()), real_A.new_zeros(())]
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler.scale(sum(terms)).backward()
        self.scaler.step(self.opt_G)
        for network in self.discriminators():
            network.requires_grad_(True)
        return fake_A.detach(), fake_B.detach(), terms

    def discriminator_step(self, real_A: Tensor, real_B: Tensor, fake_A: Tensor, fake_B: Tensor) -> list[Tensor]:
        """Update both discriminators on real vs pooled fake images, loss x 0.5 (+ the GAN loss's regulariser)."""
        pooled_A, pooled_B = self.pool_A.query(fake_A), self.pool_B.query(fake_B)
        terms = []
        with self.autocast():
            for disc, real, fake in ((self.D_A, real_A, pooled_A), (self.D_B, real_B, pooled_B)):
                judged_real, judged_fake = self.forward_each(disc, real, fake, batched=self.batch_discriminator_calls)
                loss = 0.5 * self.gan_loss.discriminator_loss(judged_real, judged_fake)
                penalty = self.gan_loss.regularizer(disc, real, fake)
                terms.append(loss if penalty is None else loss + penalty)
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler.scale(terms[0] + terms[1]).backward()
        self.scaler.step(self.opt_D)
        self.scaler.update()
        return terms

    def train_step(self, real_A: Tensor, real_B: Tensor, weights: LossWeights) -> Tensor:
        """One CycleGAN iteration; returns the 8 loss terms (``LOSS_TERMS`` order) on the device, without syncing."""
        fake_A, fake_B, g_terms = self.generator_step(real_A, real_B, weights)
        d_terms = self.discriminator_step(real_A, real_B, fake_A, fake_B)
        values = torch.stack([t.detach().float() for t in g_terms + d_terms])
        self.step_counter += 1
        newly_bad = ~torch.isfinite(values) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(newly_bad, self.step_counter, self.first_bad_step)
        return values

    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": {name: net.state_dict() for name, net in self.networks.items()},
            "optimizers": {"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict()},
            "scaler": self.scaler.state_dict(),
            "pools": {"A": self.pool_A.state_dict(), "B": self.pool_B.state_dict()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, net in self.networks.items():
            net.load_state_dict(state["networks"][name])
        self.opt_G.load_state_dict(state["optimizers"]["G"])
        self.opt_D.load_state_dict(state["optimizers"]["D"])
        self.scaler.load_state_dict(state["scaler"])
        self.pool_A.load_state_dict(state["pools"]["A"])
        self.pool_B.load_state_dict(state["pools"]["B"])

    @torch.inference_mode()
    def save_samples(self, data: UnpairedData, count: int, path: Path) -> None:
        """Grid of the first ``count`` test images per domain: real A | G_AB(A) | G_BA(G_AB(A)), then the same for B."""
        if count == 0:
            return
        rows = []
        for domain, forward, backward in (("A", self.G_AB, self.G_BA), ("B", self.G_BA, self.G_AB)):
            real = torch.stack(list(TestImages(data, domain, limit=count)))
            with self.autocast(), evaluating(self.networks.values()):
                fake = forward(self.to_device(real))
                cycled = backward(fake)
            rows += [torch.stack([real, fake.float().cpu(), cycled.float().cpu()], dim=1).flatten(0, 1)]
        save_grid(torch.cat(rows), path, columns=3)


@contextlib.contextmanager
def evaluating(networks: Any) -> Iterator[None]:
    """Put networks in eval mode for the duration, then back in train mode."""
    for network in networks:
        network.eval()
    try:
        yield
    finally:
        for network in networks:
            network.train()


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_history(out_dir: Path, history: list[dict[str, float]]) -> None:
    atomic_write_text(out_dir / "history.json", json.dumps(history, indent=1))
    if history:
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(key for row in history for key in row)), restval="")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(out_dir / "history.csv", table.getvalue())


def _export_generators(model: CycleGAN, variant: ResolvedVariant, data: UnpairedData, out_dir: Path, prefix: str = "") -> None:
    for direction, name in (("AtoB", "G_AB"), ("BtoA", "G_BA")):
        atomic_save(
            {
                "direction": direction,
                "variant_id": variant.variant_id,
                "generator": variant.components["generator"],
                "norm": variant.components["generator_norm"],
                "crop_size": data.transform.crop_size,
                "state_dict": model.networks[name].state_dict(),
            },
            out_dir / "generators" / f"{prefix}{direction}.pt",
        )


def read_result(out_dir: Path) -> dict[str, Any] | None:
    """The ``result.json`` of a variant folder, or None when the variant has not stopped there yet."""
    path = Path(out_dir) / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def train_variant(variant: ResolvedVariant, out_dir: Path, registry: Registry, show_progress: bool = True) -> dict[str, Any]:
    """Train ``variant`` in ``out_dir``, resuming from its latest checkpoint there; return the result.

    A finished variant is not trained again: its stored result is returned.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = read_result(out_dir)
    if previous and previous.get("status") == "finished" and previous.get("variant_id") == variant.variant_id:
        return previous
    run = RunInfo(variant.variant_id, out_dir, variant.as_dict())
    hook = registry.plugin_manager.hook
    try:
        result = _train(variant, run, registry, show_progress)
    except TrainingInterrupted as error:
        result = {"status": "interrupted", "variant_id": variant.variant_id, "error": str(error)}
        hook.unpaired_on_variant_end(run=run, result=result)
        raise
    except Exception as error:
        result = {"status": "failed", "variant_id": variant.variant_id, "error": f"{type(error).__name__}: {error}"}
        atomic_write_text(out_dir / "result.json", json.dumps(result, indent=1))
        hook.unpaired_on_variant_end(run=run, result=result)
        raise
    atomic_write_text(out_dir / "result.json", json.dumps(result, indent=1))
    hook.unpaired_on_variant_end(run=run, result=result)
    return result


def _train(variant: ResolvedVariant, run: RunInfo, registry: Registry, show_progress: bool) -> dict[str, Any]:
    train, out_dir, hook = variant.spec.train, run.out_dir, registry.plugin_manager.hook
    device = pick_device(train.device)
    data: UnpairedData = registry.build("dataset", variant.components["data"])
    evaluation = variant.spec.eval
    extractor = None
    if evaluation.fid:  # load it now: a missing extractor must stop the run before training, not after
        config = variant.components["feature_extractor"]
        extractor = FeatureExtractor(build_extractor(config, registry, device), config, device, evaluation.batch_size)
    seed_everything(train.seed)
    model = CycleGAN(variant, registry, device)

    def score() -> dict[str, float]:
        assert extractor is not None
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return score_generators(model.networks["G_AB"], model.networks["G_BA"], data, extractor)

    schedule = registry.build("loss_weights", variant.components["loss_weights"])
    checkpoints = out_dir / "checkpoints"
    epoch, step_in_epoch, global_step, history, best = 0, 0, 0, [], {}
    epoch_sums = torch.zeros(len(LOSS_TERMS), device=device)
    elapsed = 0.0
    found = latest_checkpoint(checkpoints)
    if found is not None:
        state = load_checkpoint(found)
        if state["variant_id"] != variant.variant_id:
            raise TrainingError(
                f"{out_dir} holds checkpoints of another variant ({state['variant_id']}, this one is "
                f"{variant.variant_id}); train into another output folder or delete {checkpoints}"
            )
        model.load_state_dict(state["model"])
        restore_rng(state["rng"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        history, elapsed, best = state["history"], state["elapsed"], state["best"]
        epoch_sums = state["epoch_sums"].to(device)
        model.step_counter.fill_(global_step)
    atomic_write_text(out_dir / "spec.json", json.dumps(variant.as_dict(), indent=1))
    # The loader's own generator keeps it from drawing on the global RNG, so resuming mid-epoch stays exact.
    loader_rng = torch.Generator()
    steps_per_epoch = math.ceil(data.train_length / train.batch_size)
    total_steps = steps_per_epoch * train.total_epochs
    last_checkpoint = found

    def save_checkpoint() -> Path:
        nonlocal last_checkpoint
        path = checkpoints / checkpoint_name(epoch, global_step)
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "variant_id": variant.variant_id,
                "spec": variant.as_dict(),
                "crop_size": data.transform.crop_size,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "history": history,
                "best": best,
                "elapsed": elapsed + (time.perf_counter() - started),
                "epoch_sums": epoch_sums.cpu(),
                "model": model.state_dict(),
                "rng": capture_rng(),
            },
            path,
        )
        remove_older_checkpoints(checkpoints, keep=path)
        last_checkpoint = path
        return path

    def check_finite() -> None:
        bad = model.first_bad_step.tolist()
        if any(step >= 0 for step in bad):
            term, step = min(((t, s) for t, s in zip(LOSS_TERMS, bad) if s >= 0), key=lambda pair: pair[1])
            kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
            raise TrainingError(
                f"loss {term} became non-finite at step {step} (epoch {epoch + 1}, step {step - epoch * steps_per_epoch} "
                f"of that epoch); {kept}. Try a lower train.lr, train.precision: fp32, or another gan_loss."
            )

    started = time.perf_counter()
    progress = tqdm(total=total_steps, initial=global_step, unit="it", disable=not show_progress, dynamic_ncols=True, desc=variant.variant_id)
    try:
        with StopSignals() as stop:
            while epoch < train.total_epochs:
                lr = learning_rate(epoch, train)
                model.set_learning_rate(lr)
                weights = schedule.at(epoch, train.total_epochs)
                order = EpochOrder(data.train_length, train.seed, epoch, start=step_in_epoch * train.batch_size)
                loader = DataLoader(
                    TrainPairs(data), batch_size=train.batch_size, sampler=order, num_workers=train.num_workers,
                    pin_memory=device.type == "cuda", generator=loader_rng,
                )
                epoch_started = time.perf_counter()
                steps_before = step_in_epoch
                for real_A, real_B in loader:
                    terms = model.train_step(model.to_device(real_A), model.to_device(real_B), weights)
                    epoch_sums += terms
                    global_step += 1
                    step_in_epoch += 1
                    progress.update()
                    if global_step % train.log_every == 0:
                        check_finite()
                        losses = dict(zip(LOSS_TERMS, terms.tolist()))
                        progress.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
                        hook.unpaired_on_step(run=run, epoch=epoch, step=global_step, losses=losses, lr=lr)
                    if stop.received is not None:
                        check_finite()
                        path = save_checkpoint()
                        raise TrainingInterrupted(f"stopped by signal {stop.received} at epoch {epoch + 1}, step {global_step}; rerun to resume from {path}")
                check_finite()
                seconds = time.perf_counter() - epoch_started
                means = (epoch_sums / max(step_in_epoch, 1)).tolist()
                epoch += 1
                metrics = {"epoch": epoch, "lr": lr, **dict(zip(LOSS_TERMS, means)), "seconds": seconds,
                           "it_per_s": (step_in_epoch - steps_before) / max(seconds, 1e-9)}
                if extractor is not None and evaluation.every and epoch % evaluation.every == 0 and epoch < train.total_epochs:
                    metrics.update(score())
                    if not best or metrics["fid_mean"] < best["fid_mean"]:
                        best = {"fid_mean": metrics["fid_mean"], "epoch": epoch}
                        _export_generators(model, variant, data, out_dir, prefix="best-")
                history.append(metrics)
                epoch_sums.zero_()
                step_in_epoch = 0
                _write_history(out_dir, history)
                if epoch % train.sample_every == 0 or epoch == train.total_epochs:
                    model.save_samples(data, variant.spec.samples, out_dir / "samples" / f"epoch-{epoch:04d}.png")
                if epoch % train.checkpoint_every == 0 or epoch == train.total_epochs:
                    save_checkpoint()
                hook.unpaired_on_epoch_end(run=run, epoch=epoch, metrics={k: v for k, v in metrics.items() if k != "epoch"})
    except torch.OutOfMemoryError as error:
        raise TrainingError(
            f"out of memory on {device} at epoch {epoch + 1}: lower data.crop_size or train.batch_size, or set "
            f"train.precision: bf16 ({str(error).splitlines()[0]})"
        ) from error
    finally:
        progress.close()
    _export_generators(model, variant, data, out_dir)
    result = {
        "status": "finished",
        "variant_id": variant.variant_id,
        "epochs": epoch,
        "steps": global_step,
        "seconds": elapsed + (time.perf_counter() - started),
        "final_losses": {k: history[-1][k] for k in LOSS_TERMS} if history else {},
        "metrics": {},
    }
    if extractor is not None:
        final = score()
        result["metrics"] = final
        if evaluation.every:
            if not best or final["fid_mean"] <= best["fid_mean"]:
                best = {"fid_mean": final["fid_mean"], "epoch": epoch}
                _export_generators(model, variant, data, out_dir, prefix="best-")
            result["metrics"] |= {"fid_mean_best": best["fid_mean"], "fid_best_epoch": best["epoch"]}
    return result
