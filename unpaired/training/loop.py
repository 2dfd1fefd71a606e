"""The training loop of one run: epochs, the learning-rate schedule, stop signals, checkpoints, evaluation.

Everything the loop needs to continue is one :class:`TrainingState` plus the model and the
RNGs, saved together as a checkpoint in the run folder: a rerun resumes exactly where the
last checkpoint left off. The update itself is the variant's method's (see ``plugin_api.methods``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from unpaired.config.resolved import ResolvedVariant
from unpaired.config.spec import TrainConfig
from unpaired.errors import Note, Notice, StopRequested, out_of_memory
from unpaired.evaluation.scoring import Scorer, Scores
from unpaired.plugin_api.components import TrainingProgress, describe
from unpaired.plugin_api.data import data_hash, fingerprints
from unpaired.plugin_api.lifecycle import RunInfo, RunResult
from unpaired.plugin_api.metrics import best_columns
from unpaired.storage.files import CorruptFileError
from unpaired.storage.records import BestEpoch, Checkpoint, ExportedGenerator, TrainingState
from unpaired.storage.run_folder import RunFolder
from unpaired.training.batches import EpochOrder, TrainPairs
from unpaired.training.contracts import check_contracts, check_data, too_few_test_images
from unpaired.training.graphs import StepRunner
from unpaired.training.parts import build_method, runtime_of
from unpaired.training.progress import Progress
from unpaired.training.watch import LossWatch
from unpaired.devices import describe_device, pick_device
from unpaired.signals import deferred_signals, stop_requested
from unpaired.training.runtime import TrainingError, TrainingInterrupted, capture_rng, restore_rng, seed_everything
from unpaired.training.samples import save_samples, save_showcase


class ScoringStopped(StopRequested):
    """A stop signal while the final generators of a run trained to the end were scored: ``result`` is the run's result
    without scores, to be recorded so that a rerun only scores it (``rescore``) instead of training anything again."""

    def __init__(self, signum: int, result: RunResult):
        super().__init__(signum)
        self.result = result


def learning_rate(epoch: int, train: TrainConfig) -> float:
    """Learning rate during 0-based ``epoch``: ``lr`` for ``epochs`` epochs, then linear decay as in
    CUT's ``train.py`` (which steps its schedule at the end of each epoch),
    ``lr * (1 - (epoch + 1 - epochs) / (decay_epochs + 1))``, which would reach 0 one epoch after the last."""
    decayed = max(0, epoch + 1 - train.epochs)
    return train.lr * (1.0 - decayed / (train.decay_epochs + 1))


class Trainer:
    """One invocation of training a run: the model, the data, where training stands, and the loop's phases."""

    def __init__(self, variant: ResolvedVariant, folder: RunFolder, run: RunInfo, hook: Any, show_progress: bool):
        self.variant = variant
        self.folder = folder
        self.run = run
        self.hook = hook
        self.show_progress = show_progress
        self.train = variant.train
        self.device = pick_device(self.train.device)
        self.data = variant.data.build()
        check_data(self.data, variant.data)  # an empty split fails now, not an epoch later
        # loaded now: a missing extractor must stop the run before training, not after
        self.scorer = Scorer(variant.eval, self.device) if variant.eval.metrics else None
        if self.scorer is not None and (problem := too_few_test_images(self.data, self.scorer.metrics)):
            raise TrainingError(problem)  # now, not after training
        seed_everything(self.train.seed)
        smaller = f"use smaller networks (their widths: generator.ngf, discriminator.ndf for the built-in ones) or {self.data.memory_hint}"
        with self.memory_told(lambda: "building the networks and trying them on two images", smaller):
            self.method = build_method(variant, self.device, self.data.transform.crop_size)
            self.runtime = runtime_of(variant, self.device)
            check_contracts(self.method, variant, self.data.transform.crop_size, self.runtime)  # before a step trains on a broken plugin
        self.terms = self.method.loss_terms
        self.watch = LossWatch(self.terms, self.device, describe(variant.method, "method"))
        self.steps_per_epoch = self.train.steps_per_epoch(self.data.train_length)
        # the training images' hashes, while the files are as they were just read
        self.state = TrainingState(epoch_sums=torch.zeros(len(self.terms), device=self.device), train_data=fingerprints(self.data, "train"))
        self.last_checkpoint: Path | None = None
        self.step = StepRunner.for_run(self.method, self.runtime, self.train.cuda_graphs)
        # The loader's own generator keeps it from drawing on the global RNG, so resuming mid-epoch stays exact.
        self.loader_rng = torch.Generator()
        self.started = time.perf_counter()

    def resume(self) -> None:
        """Take up where the folder's latest checkpoint stands, if it has one (see :meth:`read_checkpoint`)."""
        self.last_checkpoint = self.folder.latest_checkpoint()
        checkpoint = self.read_checkpoint(self.last_checkpoint) if self.last_checkpoint else None
        if checkpoint is not None:
            self.restore(checkpoint)
        self.started = time.perf_counter()

    def read_checkpoint(self, path: Path) -> Checkpoint | None:
        """The checkpoint at ``path``; None (start afresh, warned) when it is corrupt and ``train.on_corrupt_checkpoint`` allows."""
        try:
            return Checkpoint.read(path)
        except CorruptFileError as error:
            if self.train.on_corrupt_checkpoint == "stop":
                raise
            aside = self.folder.set_aside(path)
            warnings.warn(
                f"{error}. It was renamed {aside.name} and {self.folder} starts again from the beginning "
                "(set train.on_corrupt_checkpoint: stop to stop instead)",
                Notice,
                stacklevel=2,
            )
            self.last_checkpoint = None
            return None

    def restore(self, checkpoint: Checkpoint) -> None:
        """Load ``checkpoint`` of this very run: the method's state, the RNGs, where training stands, its thread count."""
        if checkpoint.run_id != self.variant.run_id:
            raise TrainingError(
                f"{self.folder} holds checkpoints of another variant or seed (run {checkpoint.run_id}, this one is "
                f"{self.variant.run_id}); train into another output folder or delete {self.folder.checkpoints}"
            )
        if self.device.type == "cpu" and checkpoint.threads != torch.get_num_threads():
            warnings.warn(
                f"{self.folder} resumes with {checkpoint.threads} CPU threads, as it started (this process had "
                f"{torch.get_num_threads()}): a CPU run's numbers depend on the thread count",
                Note,
                stacklevel=1,
            )
            torch.set_num_threads(checkpoint.threads)
        self.method.load_state_dict(checkpoint.model)
        for optimizer in self.method.optimizers():  # saved perhaps under another runtime (with or without CUDA graphs)
            self.runtime.adopt(optimizer)
        restore_rng(checkpoint.rng)
        now = self.state.train_data
        self.state.load_state_dict(checkpoint.state.state_dict())
        self.state.train_data = self.trained_on(checkpoint.state.train_data, now)
        self.watch.step.fill_(self.state.global_step)

    def trained_on(self, before: dict[str, str], now: dict[str, str]) -> dict[str, str]:
        """The hashes of the images this run has trained on, when it resumes from a checkpoint that recorded ``before``
        with the images hashed ``now``: those, or, for a domain whose images changed since (said in a notice), a hash of
        both, which no run trained on either set alone shares."""
        if not before or before == now:
            return now
        changed = ", ".join(f"train{domain}" for domain in now if before.get(domain) != now[domain])
        warnings.warn(
            f"{self.folder}: the training images ({changed}) changed since this run's last checkpoint: it goes on with them as "
            "they are now, and compare will name it as trained on other images than its variant's other seeds",
            Notice,
            stacklevel=1,
        )
        both = {domain: f"{before.get(domain)}+{hashed}" for domain, hashed in now.items() if before.get(domain) != hashed}
        return now | {domain: data_hash(text) for domain, text in both.items()}

    def elapsed(self) -> float:
        """Training seconds over all invocations so far."""
        return self.state.elapsed + (time.perf_counter() - self.started)

    def save_checkpoint(self) -> Path:
        state = dataclasses.replace(self.state, elapsed=self.elapsed())
        checkpoint = Checkpoint(
            self.variant.run_id,
            self.run.spec,
            self.data.transform.crop_size,
            state,
            self.method.state_dict(),
            capture_rng(),
            torch.get_num_threads(),
            self.translators(),
        )
        self.last_checkpoint = self.folder.save_checkpoint(checkpoint)
        return self.last_checkpoint

    def translators(self) -> dict[str, str]:
        """Direction -> the name of the method's network that translates it."""
        return {direction: self.method.translator(direction) for direction in self.method.directions}

    def check_finite(self) -> None:
        """Stop with the first non-finite loss term: its name, step and epoch (the one sync it needs)."""
        if (bad := self.watch.first_bad()) is not None:
            term, step = bad
            kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written yet"
            raise TrainingError(
                f"loss {term} became non-finite at step {step} (epoch {self.state.epoch + 1}, step "
                f"{step - self.state.epoch * self.steps_per_epoch} of that epoch); {kept}. "
                "Try a lower train.lr, train.precision: fp32, or another gan_loss."
            )

    def score(self, scorer: Scorer) -> Scores:
        """The current generators' scores; running out of memory while scoring names what lowers it (``eval.batch_size`` is
        not part of the run id: a rerun with a smaller one resumes the run from its last checkpoint)."""
        lower = f"lower eval.batch_size (a rerun resumes from the last checkpoint), or {self.data.memory_hint}"
        with self.memory_told(lambda: f"scoring the generators of epoch {self.state.epoch}", lower):
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                networks = {direction: self.method.networks[self.method.translator(direction)] for direction in self.method.directions}
                return scorer.score(networks, self.data, self.variant.data.as_dict())

    @contextlib.contextmanager
    def memory_told(self, doing: Callable[[], str], lower: str) -> Iterator[None]:
        """Torch running out of memory in the block (on the device or the host) as a :class:`TrainingError` saying what
        the run was ``doing`` then and what to ``lower``."""
        try:
            yield
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not out_of_memory(error):
                raise
            raise TrainingError(f"out of memory on {self.device} {doing()}: {lower} ({str(error).splitlines()[0]})") from error

    def export_generators(self, best: bool = False) -> None:
        for direction, network in self.translators().items():
            exported = ExportedGenerator(
                direction,  # type: ignore[arg-type]
                self.variant.run_id,
                self.variant.generator.as_dict(),
                self.variant.generator_norm.as_dict(),
                self.data.transform.crop_size,
                self.method.networks[network].state_dict(),
            )
            self.folder.export_generator(exported, best)

    def keep_if_best(self, scores: Scores, ties_win: bool = False) -> None:
        """Remember the epoch with the best ``eval.select_best_by`` so far and export its generators as best-*.pt;
        a non-finite score is never the best."""
        key, best = self.variant.eval.select_best_by, self.state.best
        if key is None or scores.scoring is None:  # nothing to choose by (resolving gives every scored variant a key)
            return
        value, lower = scores.values[key], scores.scoring.lower_is_better[key]
        if not math.isfinite(value):
            return
        better = best is None or (value < best.value if lower else value > best.value)
        if better or (ties_win and best is not None and value == best.value):
            self.state.best = BestEpoch(key, value, self.state.epoch)
            self.export_generators(best=True)

    def run_to_end(self) -> RunResult:
        """Resume from the latest checkpoint, train the remaining epochs, then export and score the final generators."""
        self.resume()
        self.folder.write_spec(self.run.spec)
        label = f"{self.run.variant} seed {self.run.seed}" if self.run.variant is not None else f"seed {self.run.seed}"
        progress = Progress(label, self.steps_per_epoch * self.train.total_epochs, self.state.global_step, self.show_progress)
        lower = f"{self.data.memory_hint}, lower train.batch_size, or set train.precision: bf16"
        try:
            with deferred_signals(), self.memory_told(lambda: f"at epoch {self.state.epoch + 1}", lower):
                while self.state.epoch < self.train.total_epochs:
                    self.train_epoch(progress)
        finally:
            progress.close()
        return self.finish()

    def train_epoch(self, progress: Progress) -> None:
        """The rest of the current epoch (all of it, unless resuming mid-epoch), then its records."""
        train = self.train
        state = self.state
        method = self.method
        lr = learning_rate(state.epoch, train)
        method.set_learning_rate(lr)
        order = EpochOrder(self.data.train_length, train.seed, state.epoch, start=state.step_in_epoch * train.batch_size)
        loader = DataLoader(
            TrainPairs(self.data),
            batch_size=train.batch_size,
            sampler=order,
            num_workers=train.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=self.loader_rng,
        )
        started, steps_before = time.perf_counter(), state.step_in_epoch
        for real_A, real_B in loader:
            progress_at = TrainingProgress(state.epoch, state.global_step + 1, self.steps_per_epoch, train.total_epochs)
            terms = self.watch.record(self.step(real_A, real_B, progress_at))
            state.epoch_sums += terms
            state.global_step += 1
            state.step_in_epoch += 1
            if state.global_step % train.log_every == 0:
                self.check_finite()
                losses = dict(zip(self.terms, terms.tolist()))
                progress.step(losses)
                self.hook.unpaired_on_step(run=self.run, epoch=state.epoch, step=state.global_step, losses=losses, lr=lr)
            else:
                progress.step()
            if (signum := stop_requested()) is not None:
                self.check_finite()
                path = self.save_checkpoint()
                raise TrainingInterrupted(
                    f"stopped by signal {signum} at epoch {state.epoch + 1}, step {state.global_step}; rerun to resume from {path}"
                )
        self.check_finite()
        seconds = time.perf_counter() - started
        metrics = self.end_epoch({"lr": lr, "epoch_seconds": seconds, "it_per_s": (state.step_in_epoch - steps_before) / max(seconds, 1e-9)})
        progress.epoch_end(train.total_epochs, state.global_step, metrics)

    def end_epoch(self, timing: dict[str, float]) -> dict[str, float]:
        """Record the epoch just trained: its mean losses (and FID when due), samples, checkpoint; tell the hooks.
        Returns its record (a row of the history)."""
        train = self.train
        state = self.state
        evaluation = self.variant.eval
        means = (state.epoch_sums / max(state.step_in_epoch, 1)).tolist()
        state.epoch += 1
        metrics = {
            "epoch": state.epoch,
            "lr": timing["lr"],
            **dict(zip(self.terms, means)),
            "epoch_seconds": timing["epoch_seconds"],
            "it_per_s": timing["it_per_s"],
        }
        if self.scorer is not None and evaluation.every and state.epoch % evaluation.every == 0 and state.epoch < train.total_epochs:
            scores = self.score(self.scorer)
            metrics.update(scores.values)
            self.keep_if_best(scores)
        state.history.append(metrics)
        state.epoch_sums.zero_()
        state.step_in_epoch = 0
        self.folder.write_history(state.history)
        if state.epoch % train.sample_every == 0 or state.epoch == train.total_epochs:
            save_samples(self.method, self.runtime, self.data, self.variant.samples, self.folder.sample_path(state.epoch))
        if state.epoch % train.checkpoint_every == 0 or state.epoch == train.total_epochs:
            self.save_checkpoint()
        self.hook.unpaired_on_epoch_end(run=self.run, epoch=state.epoch, metrics={k: v for k, v in metrics.items() if k != "epoch"})
        return metrics

    def finish(self) -> RunResult:
        """Export the final generators, score them, and return the result."""
        self.export_generators()
        save_showcase(self.method, self.runtime, self.data, self.folder)  # the report's side-by-side pictures, from this run's device
        state = self.state
        result = RunResult(
            status="finished",
            run_id=self.variant.run_id,
            epochs=state.epoch,
            steps=state.global_step,
            seconds=self.elapsed(),
            final_losses={k: state.history[-1][k] for k in self.terms} if state.history else {},
            parameters={name: sum(p.numel() for p in network.parameters()) for name, network in self.method.networks.items()},
            threads=torch.get_num_threads() if self.device.type == "cpu" else None,
            plugins=self.variant.plugins(),
            device=describe_device(self.device),
            deterministic=self.train.deterministic,
            cuda_graphs=self.step.capture,
            train_data=self.state.train_data,
        )
        if self.scorer is not None:
            try:
                scores = self.score(self.scorer)
            except StopRequested as stop:
                raise ScoringStopped(stop.signum, result) from None
            result.metrics = scores.values
            result.scoring = scores.scoring
            result.scoring_problems = scores.problems
            if self.variant.eval.every:
                self.keep_if_best(scores, ties_win=True)  # a tie goes to the final epoch
                if state.best is not None:
                    score, epoch = best_columns(state.best.column)
                    result.metrics |= {score: state.best.value, epoch: state.best.epoch}
        return result
