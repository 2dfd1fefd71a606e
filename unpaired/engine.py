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
import random
import signal
import threading
import time
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
    read_result,
    remove_older_checkpoints,
    restore_rng,
)
from unpaired.components import LossWeights
from unpaired.data import EpochOrder, TestImages, TrainPairs, UnpairedData, save_grid
from unpaired.evaluate import FeatureExtractor, build_extractor, evaluating, score_generators
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


class _VariantTraining:
    """One call of ``train_variant``: the model, data and position in training, and the loop's phases."""

    def __init__(self, variant: ResolvedVariant, run: RunInfo, registry: Registry, show_progress: bool):
        self.variant, self.run, self.train, self.evaluation = variant, run, variant.spec.train, variant.spec.eval
        self.hook, self.show_progress = registry.plugin_manager.hook, show_progress
        self.device = pick_device(self.train.device)
        self.data: UnpairedData = registry.build("dataset", variant.components["data"])
        self.extractor: FeatureExtractor | None = None
        if self.evaluation.fid:  # load it now: a missing extractor must stop the run before training, not after
            config = variant.components["feature_extractor"]
            self.extractor = FeatureExtractor(build_extractor(config, registry, self.device), config, self.device, self.evaluation.batch_size)
        seed_everything(self.train.seed)
        self.model = CycleGAN(variant, registry, self.device)
        self.schedule = registry.build("loss_weights", variant.components["loss_weights"])
        self.checkpoints = run.out_dir / "checkpoints"
        self.steps_per_epoch = self.train.steps_per_epoch(self.data.train_length)
        # Where training stands: all of it goes into every checkpoint.
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] = {}
        self.elapsed_before = 0.0
        self.epoch_sums = torch.zeros(len(LOSS_TERMS), device=self.device)
        self.last_checkpoint = latest_checkpoint(self.checkpoints)
        if self.last_checkpoint is not None:
            self._resume(load_checkpoint(self.last_checkpoint))
        # The loader's own generator keeps it from drawing on the global RNG, so resuming mid-epoch stays exact.
        self.loader_rng = torch.Generator()
        self.started = time.perf_counter()

    def _resume(self, state: dict[str, Any]) -> None:
        if state["variant_id"] != self.variant.variant_id:
            raise TrainingError(
                f"{self.run.out_dir} holds checkpoints of another variant ({state['variant_id']}, this one is "
                f"{self.variant.variant_id}); train into another output folder or delete {self.checkpoints}"
            )
        self.model.load_state_dict(state["model"])
        restore_rng(state["rng"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.history, self.elapsed_before, self.best = state["history"], state["elapsed"], state["best"]
        self.epoch_sums = state["epoch_sums"].to(self.device)
        self.model.step_counter.fill_(self.global_step)

    def elapsed(self) -> float:
        """Training seconds over all invocations so far."""
        return self.elapsed_before + (time.perf_counter() - self.started)

    def save_checkpoint(self) -> Path:
        path = self.checkpoints / checkpoint_name(self.epoch, self.global_step)
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "variant_id": self.variant.variant_id,
                "spec": self.variant.as_dict(),
                "crop_size": self.data.transform.crop_size,
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step,
                "history": self.history,
                "best": self.best,
                "elapsed": self.elapsed(),
                "epoch_sums": self.epoch_sums.cpu(),
                "model": self.model.state_dict(),
                "rng": capture_rng(),
            },
            path,
        )
        remove_older_checkpoints(self.checkpoints, keep=path)
        self.last_checkpoint = path
        return path

    def check_finite(self) -> None:
        """Stop with the first non-finite loss term: its name, step and epoch (the one sync it needs)."""
        bad = self.model.first_bad_step.tolist()
        if any(step >= 0 for step in bad):
            term, step = min(((t, s) for t, s in zip(LOSS_TERMS, bad) if s >= 0), key=lambda pair: pair[1])
            kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written yet"
            raise TrainingError(
                f"loss {term} became non-finite at step {step} (epoch {self.epoch + 1}, step {step - self.epoch * self.steps_per_epoch} "
                f"of that epoch); {kept}. Try a lower train.lr, train.precision: fp32, or another gan_loss."
            )

    def score(self) -> dict[str, float]:
        assert self.extractor is not None
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            return score_generators(self.model.networks["G_AB"], self.model.networks["G_BA"], self.data, self.extractor)

    def keep_if_best(self, fid_mean: float, ties_win: bool = False) -> None:
        """Remember the epoch with the lowest FID so far and export its generators as best-*.pt."""
        if not self.best or fid_mean < self.best["fid_mean"] or (ties_win and fid_mean == self.best["fid_mean"]):
            self.best = {"fid_mean": fid_mean, "epoch": self.epoch}
            _export_generators(self.model, self.variant, self.data, self.run.out_dir, prefix="best-")

    def train_all(self) -> None:
        progress = tqdm(total=self.steps_per_epoch * self.train.total_epochs, initial=self.global_step, unit="it",
                        disable=not self.show_progress, dynamic_ncols=True, desc=self.variant.variant_id)
        try:
            with StopSignals() as stop:
                while self.epoch < self.train.total_epochs:
                    self.train_epoch(stop, progress)
        except torch.OutOfMemoryError as error:
            raise TrainingError(
                f"out of memory on {self.device} at epoch {self.epoch + 1}: lower data.crop_size or train.batch_size, or set "
                f"train.precision: bf16 ({str(error).splitlines()[0]})"
            ) from error
        finally:
            progress.close()

    def train_epoch(self, stop: StopSignals, progress: tqdm) -> None:
        """The rest of the current epoch (all of it, unless resuming mid-epoch), then its records."""
        train = self.train
        lr = learning_rate(self.epoch, train)
        self.model.set_learning_rate(lr)
        weights = self.schedule.at(self.epoch, train.total_epochs)
        order = EpochOrder(self.data.train_length, train.seed, self.epoch, start=self.step_in_epoch * train.batch_size)
        loader = DataLoader(
            TrainPairs(self.data), batch_size=train.batch_size, sampler=order, num_workers=train.num_workers,
            pin_memory=self.device.type == "cuda", generator=self.loader_rng,
        )
        epoch_started, steps_before = time.perf_counter(), self.step_in_epoch
        for real_A, real_B in loader:
            terms = self.model.train_step(self.model.to_device(real_A), self.model.to_device(real_B), weights)
            self.epoch_sums += terms
            self.global_step += 1
            self.step_in_epoch += 1
            progress.update()
            if self.global_step % train.log_every == 0:
                self.check_finite()
                losses = dict(zip(LOSS_TERMS, terms.tolist()))
                progress.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
                self.hook.unpaired_on_step(run=self.run, epoch=self.epoch, step=self.global_step, losses=losses, lr=lr)
            if stop.received is not None:
                self.check_finite()
                path = self.save_checkpoint()
                raise TrainingInterrupted(f"stopped by signal {stop.received} at epoch {self.epoch + 1}, step {self.global_step}; rerun to resume from {path}")
        self.check_finite()
        seconds = time.perf_counter() - epoch_started
        means = (self.epoch_sums / max(self.step_in_epoch, 1)).tolist()
        self.epoch += 1
        metrics = {"epoch": self.epoch, "lr": lr, **dict(zip(LOSS_TERMS, means)), "seconds": seconds,
                   "it_per_s": (self.step_in_epoch - steps_before) / max(seconds, 1e-9)}
        evaluation = self.evaluation
        if self.extractor is not None and evaluation.every and self.epoch % evaluation.every == 0 and self.epoch < train.total_epochs:
            metrics.update(self.score())
            self.keep_if_best(metrics["fid_mean"])
        self.history.append(metrics)
        self.epoch_sums.zero_()
        self.step_in_epoch = 0
        _write_history(self.run.out_dir, self.history)
        if self.epoch % train.sample_every == 0 or self.epoch == train.total_epochs:
            self.model.save_samples(self.data, self.variant.spec.samples, self.run.out_dir / "samples" / f"epoch-{self.epoch:04d}.png")
        if self.epoch % train.checkpoint_every == 0 or self.epoch == train.total_epochs:
            self.save_checkpoint()
        self.hook.unpaired_on_epoch_end(run=self.run, epoch=self.epoch, metrics={k: v for k, v in metrics.items() if k != "epoch"})

    def finish(self) -> dict[str, Any]:
        """Export the final generators, score them, and return the result."""
        _export_generators(self.model, self.variant, self.data, self.run.out_dir)
        result = {
            "status": "finished",
            "variant_id": self.variant.variant_id,
            "epochs": self.epoch,
            "steps": self.global_step,
            "seconds": self.elapsed(),
            "final_losses": {k: self.history[-1][k] for k in LOSS_TERMS} if self.history else {},
            "metrics": {},
        }
        if self.extractor is not None:
            final = self.score()
            result["metrics"] = final
            if self.evaluation.every:
                self.keep_if_best(final["fid_mean"], ties_win=True)  # a tie goes to the final epoch
                result["metrics"] |= {"fid_mean_best": self.best["fid_mean"], "fid_best_epoch": self.best["epoch"]}
        return result


def _train(variant: ResolvedVariant, run: RunInfo, registry: Registry, show_progress: bool) -> dict[str, Any]:
    training = _VariantTraining(variant, run, registry, show_progress)
    atomic_write_text(run.out_dir / "spec.json", json.dumps(variant.as_dict(), indent=1))
    training.train_all()
    return training.finish()
