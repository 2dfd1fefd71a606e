"""Checking a plugin's component from the plugin's own test suite, in one call.

::

    from unpaired.testing import check_component

    def test_unet():
        check_component("generator", "unet", {"depth": 5, "ngf": 8})

:func:`check_component` loads the installed plugins, as every command does (so the component's
package must be installed, e.g. with ``pip install -e .``: the check then also proves that its entry
point works), puts the component into a small variant on the CPU at 32 px, builds it, runs the
contract probe that every run runs before its first step, and trains two steps. Besides, per kind:
a dataset's splits must hold images and its pairs and test images come out in [-1, 1] at the crop
size; an image pool must be reproducible from its seed and resume exactly from its ``state_dict``
(after a round trip through a checkpoint file); a feature extractor must give one finite row per
image, whatever the batch; a method must resume exactly (:func:`check_resume`, which a method's own
tests can also call alone). A broken rule raises :class:`ContractError` naming the plugin's
distribution, the component and the rule; otherwise the loss terms of the two steps come back.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, Field

from unpaired import __version__, hookimpl
from unpaired.config.overrides import merge, set_path
from unpaired.config.resolved import ResolvedVariant, resolve_variant
from unpaired.config.spec import component_slots
from unpaired.evaluation.features import FeatureExtractor, unbuilt_identity
from unpaired.plugin_api.components import Choice, Component, ComponentKind, TrainingProgress, describe
from unpaired.plugin_api.data import Domain, Split, Transform, UnpairedData
from unpaired.plugin_api.registry import Registry
from unpaired.signals import clear_stop, request_stop
from unpaired.plugin_api.lifecycle import RunResult
from unpaired.storage.run_folder import RunFolder
from unpaired.storage.files import atomic_save, load_tensors
from unpaired.training.contracts import ContractError, check_contracts
from unpaired.training.parts import build_method, runtime_of
from unpaired.training.run import train_run
from unpaired.training.watch import LossWatch

PROBE_DATASET = "unpaired-testing-images"
"""The dataset the check trains on (unless it checks a dataset): two small images per split and domain."""
STEPS = 2

__all__ = ["ComponentCheck", "ContractError", "check_component", "check_resume"]


@dataclass(frozen=True)
class ComponentCheck:
    """What :func:`check_component` measured."""

    component: Component
    losses: list[dict[str, float]]
    """The loss terms of each training step (the method's names); empty for a feature extractor or a metric."""


def check_component(
    kind: ComponentKind, name: str, params: dict[str, Any] | None = None, *, variant: dict[str, Any] | None = None, size: int = 32
) -> ComponentCheck:
    """Build, probe and train two steps of the installed component ``name`` of ``kind`` with ``params``.

    ``variant`` is a partial variant spec for everything else (e.g. a smaller default generator beside
    the discriminator under test); what it leaves out is each kind's default component. ``size`` is
    the probe images' side (a dataset under test uses its own). Raises :class:`ContractError`.
    """
    registry = _probe_registry()
    config = {"name": name, **(params or {})}
    if kind in ("feature_extractor", "metric"):
        choice = registry.resolve(kind, config)
        (_check_extractor if kind == "feature_extractor" else _check_metric)(choice, size)
        return ComponentCheck(choice.component, [])
    resolved = _probe_variant(registry, kind, config, variant, size)
    path = _slot_of(kind)
    choice = resolved.generator_norm if kind == "norm" else getattr(resolved, path)
    data = resolved.data.build()
    if kind == "dataset":
        _check_dataset(data, describe(choice, kind))
    if kind == "image_pool":
        _check_pool(choice, data.transform.crop_size)
    losses = _train(resolved, data, describe(choice, kind))
    if kind == "method":
        check_resume(name, params, variant=variant, size=size)
    return ComponentCheck(choice.component, losses)


def check_resume(
    name: str, params: dict[str, Any] | None = None, *, variant: dict[str, Any] | None = None, size: int = 32, stop_after: int = 3
) -> None:
    """Train the installed method ``name`` with ``params`` for 6 steps, and again stopped after ``stop_after`` steps (a
    checkpoint at that step boundary) then resumed in a new Python process: both must end in the same state, bit for
    bit, every network and every part :meth:`Method.stateful` lists, and with the same losses.

    It catches state a resume loses: a part left out of ``stateful()`` (an EMA's step counter), a random draw from
    a generator no checkpoint saves, a value cached at build time. ``variant`` and ``size`` as in
    :func:`check_component`. Raises :class:`ContractError` naming what differs.
    """
    registry = _probe_registry()
    resolved = _probe_variant(registry, "method", {"name": name, **(params or {})}, merge(variant or {}, {"train": _RESUMED}), size)
    who = describe(resolved.method, "method")
    with tempfile.TemporaryDirectory() as folder:
        straight, resumed = RunFolder(Path(folder) / "straight"), RunFolder(Path(folder) / "resumed")
        _finished(train_run(resolved, straight, registry, show_progress=False).result, who, "training it")
        try:
            with registry.listening(_StopAfter(stop_after)):
                stopped = train_run(resolved, resumed, registry, show_progress=False).result
        finally:
            clear_stop()
        if stopped is None or stopped.status != "interrupted":
            raise ContractError(f"{who}: a run asked to stop after step {stop_after} did not stop there")
        resume = subprocess.run([sys.executable, "-c", _RESUME_HERE, str(resumed.path)], capture_output=True, text=True, timeout=600)
        if resume.returncode != 0:
            raise ContractError(f"{who}: resuming in a new process failed:\n{resume.stderr.strip()}")
        a, b = straight.load_checkpoint(), resumed.load_checkpoint()
        assert a is not None and b is not None  # both finished: each wrote its last checkpoint
        differ = _differences(a.model, b.model, "") + _differences(a.state.epoch_sums, b.state.epoch_sums, "losses")
    if differ:
        raise ContractError(
            f"{who}: stopped after step {stop_after} and resumed in a new process, the run ended otherwise than without a "
            f"stop ({', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''} differ): every part with state that training "
            "reads must be in stateful() (or, for a network, in networks), and random draws must come from saved generators"
        )


_RESUMED = {"epochs": 2, "decay_epochs": 1, "log_every": 1}
"""3 epochs of the 2 probe pairs: 6 steps, stopped mid-epoch by default."""
_RESUME_HERE = "import sys; from unpaired.testing import _resume_here; _resume_here(sys.argv[1])"


class _StopAfter:
    def __init__(self, step: int):
        self.step = step

    @hookimpl
    def unpaired_on_step(self, run: Any, epoch: int, step: int, losses: Any, lr: float) -> None:
        if step == self.step:
            request_stop()


def _resume_here(folder: str) -> None:
    """In the new process of :func:`check_resume`: resume the run in ``folder`` to its end."""
    registry, run = _probe_registry(), RunFolder(Path(folder))
    variant = resolve_variant(run.read_spec(), registry, source=str(run.spec_file))
    _finished(train_run(variant, run, registry, show_progress=False).result, describe(variant.method, "method"), "resuming it")


def _finished(result: RunResult | None, who: str, doing: str) -> None:
    if result is None or result.status != "finished":
        raise ContractError(f"{who}: {doing} did not finish: {result.error if result else 'another process holds the run'}")


def _differences(a: Any, b: Any, where: str) -> list[str]:
    """The dotted paths at which two nested states (dicts, lists, tensors, plain values) are not equal bit for bit."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(dict.fromkeys([*a, *b]))
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    else:
        same = type(a) is type(b) and a == b
    return [] if same else [where]


def _probe_registry() -> Registry:
    """The installed plugins, and the probe dataset."""
    registry = Registry.from_entry_points()
    registry.add_plugin(_ProbePlugin(), f"unpaired:{PROBE_DATASET}", "unpaired", __version__)
    return registry


def _slot_of(kind: ComponentKind) -> str:
    return next(path for path, slot in component_slots().items() if slot.kind == kind and slot.fallback is None)


def _probe_variant(registry: Registry, kind: ComponentKind, config: dict[str, Any], variant: dict[str, Any] | None, size: int) -> ResolvedVariant:
    """The component ``config`` of ``kind`` in a small CPU variant on the probe images (``variant`` over it)."""
    base = {
        "data": {"name": PROBE_DATASET, "size": size},
        "samples": 1,
        "eval": {"metrics": []},
        "train": {"device": "cpu", "num_workers": 0, "epochs": 1, "decay_epochs": 0},
    }
    spec = set_path(merge(base, variant or {}), _slot_of(kind), config)
    return resolve_variant(spec, registry, source=f"check_component({kind!r}, {config['name']!r})")


def _train(variant: ResolvedVariant, data: UnpairedData, who: str) -> list[dict[str, float]]:
    """Two training steps on the first pairs, after the contract probe; every loss finite, every network changed."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        cpu = torch.device("cpu")
        method = build_method(variant, cpu, data.transform.crop_size)
        check_contracts(method, variant, data.transform.crop_size, runtime_of(variant, cpu))
        watch = LossWatch(method.loss_terms, cpu, describe(variant.method, "method"))
        order = torch.Generator().manual_seed(0)
        before = {name: [p.detach().clone() for p in net.parameters()] for name, net in method.networks.items()}
        losses = []
        for step in range(STEPS):
            real_A, real_B = (image[None] for image in data.train_pair(step, order))
            progress = TrainingProgress(epoch=0, step=step + 1, steps_per_epoch=STEPS, total_epochs=1)
            losses.append(dict(zip(method.loss_terms, watch.record(method.train_step(real_A, real_B, progress)).tolist())))
    bad = [f"{term} at step {step + 1}" for step, terms in enumerate(losses) for term, value in terms.items() if not np.isfinite(value)]
    if bad:
        raise ContractError(f"training with {who} gave non-finite losses: {', '.join(bad)}")
    for name, network in method.networks.items():
        trainable = [(old, new) for old, new in zip(before[name], network.parameters()) if new.requires_grad]
        if trainable and all(torch.equal(old, new) for old, new in trainable):
            raise ContractError(
                f"training with {who} changed none of {name}'s parameters: its losses reach no weight "
                "(a detach, a constant output, or a discriminator score that does not depend on the image?)"
            )
    return losses


def _check_dataset(data: UnpairedData, who: str) -> None:
    crop = data.transform.crop_size
    empty = [f"{split}{domain}" for split in ("train", "test") for domain in ("A", "B") if data.size(split, domain) < 1]
    if empty:
        raise ContractError(f"{who} must hold images in every split and domain; {', '.join(empty)} is/are empty")
    images = {
        "training pair": torch.stack(data.train_pair(0, torch.Generator().manual_seed(0))),
        "test image": torch.stack([data.test_image("A", 0), data.test_image("B", 0)]),
    }
    for what, batch in images.items():
        if batch.shape[1:] != (3, crop, crop) or batch.min() < -1 or batch.max() > 1:
            raise ContractError(
                f"{who}: a {what} must be 3 x {crop} x {crop} (the crop size) in [-1, 1]; got "
                f"{tuple(batch.shape[1:])} in [{float(batch.min()):.3g}, {float(batch.max()):.3g}]"
            )
    if data.describe("test", "A") == data.describe("test", "B"):
        raise ContractError(f"{who}: describe() must tell the test domains apart (cached FID features are keyed by it)")


def _check_pool(choice: Choice, size: int) -> None:
    """The same seed gives the same choices, and a pool restored from a checkpoint file continues exactly."""
    fakes = [torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(8)]
    who = describe(choice, "image_pool")
    straight, interrupted = choice.build(0), choice.build(0)
    expected = [straight.query(batch) for batch in fakes]
    got = [interrupted.query(batch) for batch in fakes[:4]]
    with tempfile.TemporaryDirectory() as folder:
        atomic_save({"pool": interrupted.state_dict()}, Path(folder) / "pool.pt")
        try:
            state = load_tensors(Path(folder) / "pool.pt")["pool"]
        except Exception as error:
            raise ContractError(
                f"{who}: state_dict() must hold only tensors and plain Python values (checkpoints are "
                f"loaded with weights_only=True); loading it failed: {error}"
            ) from error
    resumed = choice.build(1)  # another seed: everything must come from the state
    resumed.load_state_dict(state)
    got += [resumed.query(batch) for batch in fakes[4:]]
    if any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(expected, got)):
        raise ContractError(
            f"{who}: a pool restored with load_state_dict(state_dict()) must continue exactly as the "
            "original (stored images, fill level and its own RNG's state in the state; no global RNG)"
        )


def _check_extractor(choice: Choice, size: int) -> None:
    """One finite feature row per image, the same whether an image comes alone or in a batch."""
    who = describe(choice, "feature_extractor")
    images = [torch.rand(3, size, size, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(4)]
    extractor = FeatureExtractor(choice, torch.device("cpu"), batch_size=4)
    together = extractor(images)
    extractor.batch_size = 1
    apart = extractor(images)
    if together.ndim != 2 or len(together) != len(images) or not torch.isfinite(together).all():
        raise ContractError(f"{who} must give finite features (N, D), one row per image; it gave {tuple(together.shape)}")
    if not torch.allclose(together, apart, rtol=1e-3, atol=1e-4 * float(together.abs().max())):
        raise ContractError(f"{who} must give an image the same features alone as in a batch (use eval mode; no batch statistics)")
    unbuilt = unbuilt_identity(choice)
    if unbuilt is not None and unbuilt != extractor.cache_identity():
        raise ContractError(
            f"{who}'s cache_identity_of(params) says {unbuilt!r}, but the built extractor's cache_identity is "
            f"{extractor.cache_identity()!r}: compare and the report would expect scores of another evaluation than the runs carry"
        )


def _check_metric(choice: Choice, size: int) -> None:
    """A finite score of two sets of random inputs (features, or images when it compares images), the same twice."""
    who = describe(choice, "metric")
    metric = choice.build()
    make = (
        (lambda seed: torch.rand(8, 16, generator=torch.Generator().manual_seed(seed)))
        if metric.uses_features
        else (lambda seed: torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)))
    )
    real, fake = make(0), make(1)
    first, second = metric.compute(real, fake), metric.compute(real, fake)
    if not np.isfinite(first.value):
        raise ContractError(f"{who} must give a finite score for ordinary inputs; it gave {first.value}")
    if first != second:
        raise ContractError(f"{who} must be deterministic: the same inputs gave {first.value} and then {second.value}")


class _ProbeImagesParams(BaseModel):
    size: int = Field(32, ge=8, description="side of the square images")


class ProbeImages(UnpairedData):
    """Two images per split and domain: smooth random colour fields, domain B with stripes on top."""

    def __init__(self, params: _ProbeImagesParams):
        super().__init__(Transform(load_size=None, crop_size=params.size, crop=False, flip=False))
        self.side = params.size

    def size(self, split: Split, domain: Domain) -> int:
        return 2

    def image(self, split: Split, domain: Domain, index: int) -> Image.Image:
        key = (("train", "test").index(split) * 2 + "AB".index(domain)) * 2 + index
        field = F.interpolate(
            torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(key)), size=(self.side, self.side), mode="bilinear", align_corners=False
        )[0]
        if domain == "B":
            field = field * (0.5 + 0.5 * torch.sin(torch.arange(self.side) * 1.3)).view(1, 1, -1)
        return Image.fromarray((field.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), mode="RGB")

    def describe(self, split: Split, domain: Domain) -> str:
        return f"{PROBE_DATASET}:{split}{domain}:{self.side}"


class _ProbePlugin:
    @hookimpl
    def unpaired_register_datasets(self, register: Any) -> None:
        register(PROBE_DATASET, ProbeImages, _ProbeImagesParams, "the images unpaired.testing trains a component on")
