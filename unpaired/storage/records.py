"""What a run folder's files hold, as types: the checkpoint and an exported generator (the result, ``RunResult``, is
the plugin contract's: :mod:`unpaired.plugin_api.lifecycle`).

Each type knows its file format (and its version) and checks it when a file is read back;
:class:`unpaired.storage.run_folder.RunFolder` knows where each file lives.
"""

from __future__ import annotations

import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from pydantic import ValidationError

from unpaired.errors import InputError, UnpairedError
from unpaired.plugin_api.lifecycle import RunResult
from unpaired.plugin_api.methods import Direction
from unpaired.plugin_api.registry import Registry
from unpaired.storage.files import CorruptFileError, load_tensors

CHECKPOINT_FORMAT = 3
GENERATOR_FORMAT = 2


def describe_failure(error: BaseException) -> str:
    """What ``error.txt`` holds: the message for errors the user can fix, the whole traceback for the rest."""
    if isinstance(error, UnpairedError):
        return f"{type(error).__name__}: {error}\n"
    return "".join(traceback.format_exception(error))


@dataclass(frozen=True)
class BestEpoch:
    """The best-scored epoch of a run so far: the score chosen by (``eval.select_best_by``), its value, and the epoch."""

    column: str
    value: float
    epoch: int
    """Epochs completed when it was scored (1 for the first)."""


@dataclass
class TrainingState:
    """Where a run's training stands: the part of a checkpoint besides the networks and RNGs."""

    epoch: int = 0
    """Epochs completed."""
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    """One row per completed epoch: mean loss terms, lr, epoch_seconds, it/s (and FID when scored)."""
    best: BestEpoch | None = None
    """The best-scored epoch so far, when scored during training."""
    elapsed: float = 0.0
    """Training seconds over all invocations so far."""
    epoch_sums: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    """Sums of the current epoch's loss terms so far (on the training device; on the CPU in a checkpoint)."""
    train_data: dict[str, str] = field(default_factory=dict)
    """Hashes of the images it has trained on, by domain (``fingerprints``; none in checkpoints made before they were)."""

    def state_dict(self) -> dict[str, Any]:
        """Plain values, as a checkpoint holds them (the fields in order, which its checksum reads): the loss sums on
        the CPU, the best epoch as a dict (empty when none)."""
        best = {} if self.best is None else {"column": self.best.column, "value": self.best.value, "epoch": self.best.epoch}
        return {**vars(self), "best": best, "epoch_sums": self.epoch_sums.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stand where ``state`` (from :meth:`state_dict`) stands; the loss sums stay on this state's device. A field it
        lacks keeps its default; one it has that is not a field raises ``TypeError``, a malformed best epoch too."""
        best = state.get("best")
        loaded = TrainingState(**{**state, "best": BestEpoch(**best) if best else None})
        device = self.epoch_sums.device
        vars(self).update(vars(loaded))
        self.epoch_sums = loaded.epoch_sums.to(device)


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly, saved and restored as one object."""

    run_id: str
    spec: dict[str, Any]
    """The resolved variant (``ResolvedVariant.as_dict``)."""
    crop_size: int
    state: TrainingState
    model: dict[str, Any]
    """``Method.state_dict()``: the method's networks and every other stateful part (optimisers, pools, losses, ...)."""
    rng: dict[str, Any]
    """Every global RNG's state."""
    threads: int
    """The CPU threads the run trained with: on a CPU the numbers depend on it, so a resume uses the same."""
    translators: dict[str, str]
    """Direction -> the name of the network in ``model["networks"]`` that translates it."""

    def to_file(self) -> dict[str, Any]:
        content = {**vars(self), "state": self.state.state_dict()}  # the fields in their order, as the checksum reads them
        return {"format": CHECKPOINT_FORMAT, "checksum": checksum(content), **content}

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        return cls.from_file(path, _load(path, "checkpoint"))

    @classmethod
    def from_file(cls, path: Path, stored: dict[str, Any]) -> Checkpoint:
        """The checkpoint in ``stored``, what :meth:`to_file` wrote to ``path`` (format and checksum checked)."""
        content = _checked(path, stored, CHECKPOINT_FORMAT, "checkpoint", finite=("model", "state"))  # a run stops at a non-finite loss
        try:
            state = TrainingState()
            state.load_state_dict(content["state"])
            return cls(**{**content, "state": state})
        except (KeyError, TypeError) as error:
            raise CorruptFileError(path, f"is not a complete checkpoint ({type(error).__name__}: {error})") from None


@dataclass(frozen=True)
class ExportedGenerator:
    """A trained generator with what it takes to rebuild it: its spec, norm and test resolution."""

    direction: Direction
    run_id: str
    generator: dict[str, Any]
    """``{"name": ..., **params}`` of the generator component."""
    norm: dict[str, Any]
    crop_size: int
    state_dict: dict[str, torch.Tensor]

    def build(self, registry: Registry) -> nn.Module:
        """The trained generator, rebuilt from its component and weights, in eval mode on the CPU."""
        norm = registry.build("norm", self.norm)
        generator = registry.build("generator", self.generator, norm)
        generator.load_state_dict(self.state_dict)
        return generator.eval()

    def to_file(self) -> dict[str, Any]:
        return {"format": GENERATOR_FORMAT, "checksum": checksum(vars(self)), **vars(self)}

    @classmethod
    def read(cls, path: Path, direction: Direction | None) -> ExportedGenerator:
        """The ``direction`` generator from an exported generator file or from a training checkpoint (None: the one
        the file holds; a checkpoint holding two must be told which)."""
        stored = _load(path, "exported generator or checkpoint")
        if isinstance(stored.get("model"), dict):
            checkpoint = Checkpoint.from_file(path, stored)
            if direction is None and len(checkpoint.translators) > 1:
                both = " and ".join(checkpoint.translators)
                raise InputError(f"{path} is a training checkpoint holding the generators of {both}: choose one (--direction)")
            direction = direction or cast(Direction, next(iter(checkpoint.translators)))
            if direction not in checkpoint.translators:
                raise InputError(f"{path} is a checkpoint of a method that translates only {', '.join(checkpoint.translators)}, not {direction}")
            return cls(
                direction,
                checkpoint.run_id,
                checkpoint.spec["generator"],
                checkpoint.spec["generator_norm"],
                checkpoint.crop_size,
                checkpoint.model["networks"][checkpoint.translators[direction]],
            )
        stored = _checked(path, stored, GENERATOR_FORMAT, "exported generator", finite=("state_dict",))
        if direction is not None and stored.get("direction") != direction:
            raise InputError(f"{path} holds the {stored.get('direction')} generator, not {direction}; use the {direction} one")
        try:
            return cls(**stored)
        except TypeError as error:
            raise CorruptFileError(path, f"is not a complete exported generator ({error})") from None


def _load(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path} is not a file: name a run's {what} file")
    try:
        stored = load_tensors(path)
    except CorruptFileError:
        raise
    except Exception as error:  # torch raises many types for a torn archive
        raise CorruptFileError(path, f"is not a readable {what} ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if not isinstance(stored, dict):
        raise CorruptFileError(path, f"is not an unpaired {what}")
    return stored


def checksum(tree: Any) -> int:
    """CRC-32 of everything in ``tree`` (nested dicts, lists and tuples of tensors and plain values), in order:
    what a checkpoint stores to detect bytes that changed on disk (torch.load checks none)."""
    crc = 0
    stack = [tree]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(reversed([item for pair in value.items() for item in pair]))
        elif isinstance(value, (list, tuple)):
            stack.extend(reversed(value))
        elif isinstance(value, torch.Tensor):
            crc = zlib.crc32(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy(), crc)  # type: ignore[arg-type]
        else:
            crc = zlib.crc32(repr(value).encode(), crc)
    return crc


def _check_checksum(path: Path, stored: Any, content: Any, what: str) -> None:
    if stored != checksum(content):
        raise CorruptFileError(path, f"is corrupt: its contents do not match the checksum written with this {what}")


def non_finite(tree: Any, where: str = "") -> str | None:
    """The key path of the first floating-point tensor in ``tree`` holding a NaN or an infinity, or None when all are finite."""
    if isinstance(tree, dict):
        items: Any = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        bad = isinstance(tree, torch.Tensor) and tree.is_floating_point() and not bool(torch.isfinite(tree).all())
        return where if bad else None
    return next((found for key, value in items if (found := non_finite(value, f"{where}.{key}" if where else str(key)))), None)


def _checked(path: Path, stored: dict[str, Any], expected_format: int, what: str, finite: tuple[str, ...]) -> dict[str, Any]:
    """What a file of ``what`` at ``path`` holds besides its format and checksum, once both are checked and its
    ``finite`` parts hold no NaN or infinite value; :class:`CorruptFileError` naming the file and the fault otherwise."""
    _check_format(path, stored, expected_format, what)
    content = {key: value for key, value in stored.items() if key not in ("format", "checksum")}
    _check_checksum(path, stored.get("checksum"), content, what)
    _check_finite(path, {key: content.get(key) for key in finite}, what)
    return content


def _check_finite(path: Path, tree: Any, what: str) -> None:
    """Non-finite weights: nothing can be trained or translated from them (a run stops at its first non-finite loss, so
    the file was changed on disk or copied from a broken run)."""
    if (where := non_finite(tree)) is not None:
        raise CorruptFileError(path, f"is corrupt: {where} holds NaN or infinite values, so no {what} can be used from it")


def _check_format(path: Path, stored: dict[str, Any], expected: int, what: str) -> None:
    if stored.get("format", 1) != expected:  # files without a format number are the first format
        raise CorruptFileError(
            path,
            f"is {'an' if what[0] in 'aeiou' else 'a'} {what} of format {stored.get('format', 1)}; this version of unpaired reads format {expected}. "
            "Retrain the run, or use the version of unpaired that wrote it.",
        )


def validate_result(path: Path, data: Any) -> RunResult:
    """``data`` read from ``path`` as a :class:`RunResult`; anything else raises :class:`CorruptFileError` naming the file."""
    try:
        return RunResult.model_validate(data)
    except ValidationError as error:
        raise CorruptFileError(path, f"is not a run result ({error.errors()[0]['msg']}); delete it and run again") from None
