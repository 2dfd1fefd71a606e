"""FID and KID of trained generators on the test split, with real-image features cached on disk.

Both real and translated images enter the feature extractor the same way: uint8 RGB at the
test resolution (``crop_size``), i.e. the [-1, 1] tensors mapped by ``round((x + 1) * 127.5)``;
the Inception extractor resizes them to 299 px internally. FID and KID are computed by
torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` from the features.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unpaired.errors import UnpairedError
from unpaired.plugin_api.components import Choice
from unpaired.plugin_api.data import Domain, Transform, UnpairedData, list_images, load_image, to_uint8
from unpaired.results.files import atomic_save, load_tensors

CACHE_ENV = "UNPAIRED_CACHE"


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
        self.choice, self.device, self.batch_size = choice, device, batch_size
        try:
            self.network = choice.build().to(device).eval()
            with torch.inference_mode():
                features = self.network(torch.zeros(1, 3, 64, 64, dtype=torch.uint8, device=device))
        except Exception as error:
            raise EvaluationError(
                f"the FID feature extractor {choice.name!r} could not be loaded ({type(error).__name__}: {error}). "
                "Or switch FID off with eval.fid: false."
            ) from error
        if features.ndim != 2 or features.shape[0] != 1:
            raise EvaluationError(f"feature extractor {choice.name!r} returned shape {tuple(features.shape)}, expected (1, D)")

    @torch.inference_mode()
    def __call__(self, images: Iterable[Tensor]) -> Tensor:
        """Features (N, D) of the images, fed as uint8 in batches."""
        rows, batch = [], []
        for image in images:
            batch.append(image)
            if len(batch) == self.batch_size:
                rows.append(self._run(torch.stack(batch)))
                batch = []
        if batch:
            rows.append(self._run(torch.stack(batch)))
        return torch.cat(rows).float().cpu()

    def _run(self, images: Tensor) -> Tensor:
        return self.network(to_uint8(images).to(self.device))

    def identity(self) -> str:
        """What makes features of the same images differ: the extractor's parameters and what the extractor
        itself says besides (its ``cache_identity``, e.g. the weights file it loaded)."""
        return json.dumps({"config": self.choice.as_dict(), "identity": getattr(self.network, "cache_identity", "")}, sort_keys=True)


def real_features(data: UnpairedData, dataset: dict[str, Any], domain: Domain, extractor: FeatureExtractor) -> Tensor:
    """Features of every test image of ``domain``, from the disk cache when the same images, resolution and
    extractor were seen before. The images are identified by the dataset component and all its validated
    parameters (``dataset``: ``{"name", **params}``) plus what ``data.describe`` adds (e.g. the files' stamps)."""
    key = json.dumps([dataset, data.describe("test", domain), data.transform.crop_size, extractor.identity()], sort_keys=True, default=str)
    path = cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    if path.is_file():
        try:
            return load_tensors(path)["features"]
        except Exception:  # an unreadable cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    features = extractor(data.test_images(domain))
    atomic_save({"features": features, "key": key}, path)
    return features


class _Precomputed(nn.Module):
    """Lets torchmetrics' metrics take feature rows directly (identity with a known width)."""

    def __init__(self, width: int):
        super().__init__()
        self.num_features = width

    def forward(self, features: Tensor) -> Tensor:
        return features


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (torchmetrics' FID)."""
    from torchmetrics.image.fid import FrechetInceptionDistance  # slow to import: only when scoring

    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_from_features(real: Tensor, fake: Tensor, subsets: int = 100) -> tuple[float, float]:
    """Kernel Inception Distance (mean, std over subsets); subset size fitted to the smaller set, at most 1000."""
    from torchmetrics.image.kid import KernelInceptionDistance

    subset_size = min(1000, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # it warns that it keeps all features: that is the point here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=subset_size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mean, std = metric.compute()
    return float(mean), float(std)


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


@torch.inference_mode()
def translated(generator: nn.Module, data: UnpairedData, domain: Domain, batch_size: int, device: torch.device) -> Iterable[Tensor]:
    """G(x) for every test image x of ``domain``, in batches, in eval mode (autocast to bf16 on CUDA)."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with evaluating([generator]):
        n = data.size("test", domain)
        for start in range(0, n, batch_size):
            batch = torch.stack([data.test_image(domain, i) for i in range(start, min(start + batch_size, n))]).to(device)
            with autocast:
                yield from generator(batch).float().cpu()


def score_generators(G_AB: nn.Module, G_BA: nn.Module, data: UnpairedData, dataset: dict[str, Any], extractor: FeatureExtractor) -> dict[str, float]:
    """fid_a2b = FID(G_AB(testA), testB), fid_b2a = FID(G_BA(testB), testA), their mean, and KID the same ways."""
    metrics: dict[str, float] = {}
    for name, generator, source, target in (("a2b", G_AB, "A", "B"), ("b2a", G_BA, "B", "A")):
        real = real_features(data, dataset, target, extractor)
        fake = extractor(translated(generator, data, source, extractor.batch_size, extractor.device))
        metrics[f"fid_{name}"] = fid_from_features(real, fake)
        metrics[f"kid_{name}"], metrics[f"kid_{name}_std"] = kid_from_features(real, fake)
    metrics["fid_mean"] = (metrics["fid_a2b"] + metrics["fid_b2a"]) / 2
    metrics["kid_mean"] = (metrics["kid_a2b"] + metrics["kid_b2a"]) / 2
    return metrics


def folder_images(folder: Path, size: int) -> Iterable[Tensor]:
    """The images of a folder resized to ``size`` x ``size`` as [-1, 1] tensors (the test pre-processing)."""
    transform = Transform(load_size=None, crop_size=size, crop=False, flip=False)
    paths = list_images(folder)
    if len(paths) < 2:
        raise EvaluationError(f"{folder} holds {len(paths)} image(s); FID needs at least 2")
    return (transform.test(load_image(path)) for path in paths)


def score_folders(first: Path, second: Path, size: int, extractor: FeatureExtractor) -> dict[str, float]:
    """FID and KID between the images of two folders, both pre-processed like test images."""
    a, b = extractor(folder_images(first, size)), extractor(folder_images(second, size))
    kid, kid_std = kid_from_features(a, b)
    return {"fid": fid_from_features(a, b), "kid": kid, "kid_std": kid_std}
