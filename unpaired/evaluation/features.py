"""Feature extraction for scoring: the extractor component, translated test images, real-image features cached on disk.

Both real and translated images enter the feature extractor the same way: uint8 RGB at the
test resolution (``crop_size``), i.e. the [-1, 1] tensors mapped by ``round((x + 1) * 127.5)``;
the Inception extractor resizes them to 299 px internally.

Precision is one policy, here: generators translate and the extractor runs in float32, with any
autocast switched off, whatever the device and the run's ``train.precision``. A score therefore
never depends on where it was computed (a bf16 run on a GPU scores as its weights would on a CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unpaired.config.study import PlannedRun
from unpaired.errors import Notice, UnpairedError, listed
from unpaired.plugin_api.components import Choice
from unpaired.plugin_api.data import UNREADABLE_IMAGE, Domain, Transform, UnpairedData, list_images, load_image, to_uint8
from unpaired.signals import raise_if_stopped
from unpaired.storage.files import StorageError, atomic_save, load_tensors

CACHE_ENV = "UNPAIRED_CACHE"
_UNWRITABLE: set[Path] = set()
"""Cache folders this process could not write to: told once, not for every run and direction."""


class EvaluationError(UnpairedError):
    """The feature extractor cannot be used, or there is nothing to score; the message says how to fix it."""


def cache_dir() -> Path:
    """Where real-image features are cached: ``$UNPAIRED_CACHE`` or ``~/.cache/unpaired``, then ``features/``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "unpaired") / "features"


class FeatureExtractor:
    """A feature extractor component, built and checked, run over batches of [-1, 1] images."""

    def __init__(self, choice: Choice, device: torch.device, batch_size: int):
        """Build the extractor ``choice`` names and check that it turns one uint8 image into one feature row.

        When it cannot be built (e.g. missing weights), the error carries the plugin's own advice
        and the way out that always works: switching FID off.
        """
        self.choice = choice
        self.device = device
        self.batch_size = batch_size
        try:
            self.network = choice.build().to(device).eval()
            with torch.inference_mode():
                features = self.network(torch.zeros(1, 3, 64, 64, dtype=torch.uint8, device=device))
        except Exception as error:
            raise EvaluationError(
                f"the FID feature extractor {choice.name!r} could not be loaded ({type(error).__name__}: {error}). "
                "Or switch scoring off with eval.metrics: []."
            ) from error
        if features.ndim != 2 or features.shape[0] != 1:
            raise EvaluationError(f"feature extractor {choice.name!r} returned shape {tuple(features.shape)}, expected (1, D)")

    @torch.inference_mode()
    def __call__(self, images: Iterable[Tensor]) -> Tensor:
        """Features (N, D) of the images, fed as uint8 in batches, in float32 (see the module docstring)."""
        rows, batch = [], []
        for image in images:
            batch.append(image)
            if len(batch) == self.batch_size:
                raise_if_stopped()
                rows.append(self._run(torch.stack(batch)))
                batch = []
        if batch:
            rows.append(self._run(torch.stack(batch)))
        return torch.cat(rows).float().cpu()

    def _run(self, images: Tensor) -> Tensor:
        with full_precision(self.device):
            return self.network(to_uint8(images).to(self.device)).float()

    def cache_identity(self) -> str:
        """What the built extractor says identifies its features beyond its parameters (e.g. its weights file)."""
        return str(getattr(self.network, "cache_identity", ""))

    def identity(self) -> str:
        """What makes features of the same images differ: the extractor's parameters and what the extractor
        itself says besides (its ``cache_identity``, e.g. the weights file it loaded)."""
        return json.dumps({"config": self.choice.as_dict(), "identity": self.cache_identity()}, sort_keys=True)


def real_features(data: UnpairedData, dataset: dict[str, Any], domain: Domain, extractor: FeatureExtractor) -> Tensor:
    """Features of every test image of ``domain``, from the disk cache when the same images, resolution and
    extractor were seen before. The images are identified by the dataset component and all its validated
    parameters (``dataset``: ``{"name", **params}``) plus what ``data.describe`` adds (e.g. the files' stamps)."""
    key = json.dumps([dataset, data.describe("test", domain), data.transform.crop_size, extractor.identity()], sort_keys=True, default=str)
    path = cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    cached = _cached_features(path, key, data.size("test", domain)) if path.is_file() else None
    if cached is not None:
        return cached
    features = extractor(data.test_images(domain))
    try:
        atomic_save({"features": features, "key": key}, path)
    except StorageError as error:  # a cache only saves time: a full or unwritable cache folder must not fail the scoring
        if path.parent not in _UNWRITABLE:
            _UNWRITABLE.add(path.parent)
            warnings.warn(f"the real-image features are not cached ({error}); set ${CACHE_ENV} to a writable folder", Notice, stacklevel=2)
    return features


def _cached_features(path: Path, key: str, images: int) -> Tensor | None:
    """The features of ``images`` images under ``key`` that ``path`` holds; None, with a notice, when the entry is
    damaged (it is removed then: a score from it would be wrong without any sign)."""
    try:
        entry = load_tensors(path)
        problem = _entry_problem(entry, key, images)
    except Exception as error:
        entry, problem = None, f"cannot be read ({getattr(error, 'problem', None) or type(error).__name__})"
    if problem is None:
        return entry["features"]
    warnings.warn(f"the cached real-image features {path} {problem}; they are computed again", Notice, stacklevel=3)
    path.unlink(missing_ok=True)
    return None


def _entry_problem(entry: Any, key: str, images: int) -> str | None:
    features = entry.get("features") if isinstance(entry, dict) else None
    if not isinstance(features, Tensor) or features.ndim != 2:
        return "hold no feature matrix"
    if entry.get("key") != key:
        return "were computed for other images or another extractor"
    if features.shape[0] != images:
        return f"hold {features.shape[0]} rows for {images} test images"
    if not torch.isfinite(features).all():
        return "hold values that are not finite"
    return None


@contextlib.contextmanager
def evaluating(networks: Iterable[nn.Module]) -> Iterator[None]:
    """Put networks in eval mode for the duration, then back in the mode each was in."""
    networks = list(networks)
    modes = [network.training for network in networks]
    for network in networks:
        network.eval()
    try:
        yield
    finally:
        for network, mode in zip(networks, modes):
            network.train(mode)


def full_precision(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Autocast off: scoring runs in float32 whatever context it is called from."""
    return torch.autocast(device.type, enabled=False)


@torch.inference_mode()
def translated(generator: nn.Module, data: UnpairedData, domain: Domain, batch_size: int, device: torch.device) -> Iterable[Tensor]:
    """G(x) for every test image x of ``domain``, in batches, in eval mode and float32 (see the module docstring)."""
    with evaluating([generator]):
        n = data.size("test", domain)
        for start in range(0, n, batch_size):
            raise_if_stopped()
            batch = torch.stack([data.test_image(domain, i) for i in range(start, min(start + batch_size, n))]).to(device)
            with full_precision(device):
                yield from generator(batch.float()).float().cpu()


def folder_images(folder: Path, size: int, fewest: int) -> list[Tensor]:
    """Every image of a folder resized to ``size`` x ``size`` as [-1, 1] tensors (the test pre-processing), at least
    ``fewest`` of them (what the metrics that compare them need, :attr:`Metric.min_images`). A score compares all of
    them, so a file that cannot be decoded is an error naming it (with every other one), not skipped."""
    transform = Transform(load_size=None, crop_size=size, crop=False, flip=False)
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder" + ("" if folder.is_absolute() else f" (relative to {Path.cwd()})"))
    paths = list_images(folder)
    if len(paths) < fewest:
        raise EvaluationError(f"{folder} holds {len(paths)} image(s); the metrics need at least {fewest} on each side")
    images, unreadable = [], []
    for path in paths:
        try:
            images.append(transform.test(load_image(path)))
        except UNREADABLE_IMAGE as error:
            unreadable.append(f"{path} ({error})")
    if unreadable:
        raise EvaluationError(f"{folder}: {len(unreadable)} image(s) cannot be read: {listed(unreadable, '; ')}; fix or remove them")
    return images


def expected_evaluations(runs: list[PlannedRun], load: bool = True) -> dict[str, str]:
    """Run id -> the evaluation identity its scores must carry (runs that score nothing are left out). An extractor
    whose factory says its identity unbuilt (``cache_identity_of``) is not loaded; one that cannot is built once, on the
    CPU. Where the factory cannot tell (its weights are not here), ``load`` decides: making scores (``True``) builds it,
    so its own error says how to get it; reading them (``False``) raises saying the scores cannot be checked here.
    An evaluation whose metrics all compare images needs no extractor."""
    extractors: dict[str, str] = {}
    expected = {}
    for run in runs:
        evaluation = run.resolved.eval
        if not evaluation.metrics:
            continue
        extractor_identity = ""
        if evaluation.uses_features:
            key = _extractor_key(evaluation.feature_extractor)
            if key not in extractors:
                extractors[key] = _extractor_identity(evaluation.feature_extractor, load)
            extractor_identity = extractors[key]
        expected[run.run_id] = evaluation.identity(extractor_identity)
    return expected


def check_extractors(runs: list[PlannedRun]) -> None:
    """Build each feature extractor that ``runs`` score with, once, on the CPU: a missing or broken one stops a study
    before any training, with its own advice, rather than each run after it trained. One whose factory cannot say its
    identity unbuilt is left out: :func:`expected_evaluations` built it already, to learn that identity."""
    checked = set()
    for run in runs:
        evaluation = run.resolved.eval
        key = _extractor_key(evaluation.feature_extractor)
        said_unbuilt = _identity_teller(evaluation.feature_extractor) is not None
        if evaluation.metrics and evaluation.uses_features and said_unbuilt and key not in checked:
            FeatureExtractor(evaluation.feature_extractor, torch.device("cpu"), batch_size=1)
            checked.add(key)


def _extractor_key(choice: Choice) -> str:
    return json.dumps(choice.as_dict(), sort_keys=True)


def _extractor_identity(choice: Choice, load: bool) -> str:
    try:
        said = unbuilt_identity(choice)
    except Exception as error:  # e.g. its weights are not on this machine
        if not load:
            raise EvaluationError(f"which {choice.component.name} features made the scores cannot be told here: {error}") from error
        said = None  # building it says why it cannot be, and how to fix that
    if said is not None:
        return said
    return FeatureExtractor(choice, torch.device("cpu"), batch_size=1).cache_identity()


def unbuilt_identity(choice: Choice) -> str | None:
    """The ``cache_identity`` the extractor ``choice`` names will have, said by its factory's ``cache_identity_of(params)``
    without building it; None when the factory cannot say."""
    said = _identity_teller(choice)
    return None if said is None else str(said(choice.params))


def _identity_teller(choice: Choice) -> Callable[[Any], Any] | None:
    """The factory's ``cache_identity_of``, when it has one."""
    said = getattr(choice.component.factory, "cache_identity_of", None)
    return said if callable(said) else None
