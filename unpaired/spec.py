"""The variant spec: every choice that defines one CycleGAN training run, with the paper's defaults.

A spec is plain data (YAML or JSON). Its own fields are checked by the pydantic
models here; each component's parameters are checked by that component's model
through the registry (:func:`resolve_variant`). Every problem is reported with
the file, the dotted path and the offending value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from unpaired.registry import ComponentError, InvalidParamsError, Registry, pydantic_problems
from unpaired.weight_init import InitScheme

Device = str
Precision = Literal["fp32", "bf16", "fp16"]


class ComponentConfig(BaseModel):
    """``{name: ..., **params}``: which component to use; its parameters are checked by the component itself."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="a registered component name (see `unpaired plugins`)")


def _component(name: str, **params: Any) -> Any:
    return Field(default_factory=lambda: ComponentConfig(name=name, **params))


class TrainConfig(BaseModel):
    """Optimisation, schedule and runtime settings."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(100, ge=0, description="epochs at the initial learning rate")
    decay_epochs: int = Field(100, ge=0, description="epochs of linear learning-rate decay towards 0 that follow")
    batch_size: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0, description="Adam learning rate of generators and discriminators")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas")
    init: InitScheme = Field("normal", description="weight initialisation: normal | xavier | kaiming | orthogonal")
    init_gain: float = Field(0.02, gt=0, description="std of `normal`, gain of xavier/orthogonal")
    seed: int = Field(0, ge=0, description="seeds weights, data order, augmentation and image pools")
    precision: Precision = Field("fp32", description="fp32, or autocast to bf16 / fp16 (fp16 with grad scaling)")
    channels_last: bool = Field(False, description="NHWC memory format (often faster on GPUs)")
    compile: bool = Field(False, description="torch.compile the networks")
    device: Device = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto picks cuda, then mps, then cpu")
    num_workers: int = Field(2, ge=0, description="data-loading processes")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (also written at the end and on SIGINT/SIGTERM)")
    sample_every: int = Field(1, ge=1, description="epochs between sample grids")
    log_every: int = Field(100, ge=1, description="steps between loss readings (the only host syncs of the loop)")

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.decay_epochs

    def steps_per_epoch(self, train_length: int) -> int:
        """Steps in one epoch of ``train_length`` pairs (the last batch may be smaller)."""
        return -(-train_length // self.batch_size)


class EvalConfig(BaseModel):
    """How trained generators are scored (FID/KID on the full test split, both directions)."""

    model_config = ConfigDict(extra="forbid")
    fid: bool = Field(True, description="score FID and KID after training (false: no scoring)")
    every: int = Field(0, ge=0, description="also score every N epochs and keep the best generators (0: only at the end)")
    batch_size: int = Field(25, ge=1, description="images per batch when translating and extracting features")
    feature_extractor: ComponentConfig = _component("inception")


RUNTIME_ONLY_FIELDS = {"device", "num_workers", "checkpoint_every", "sample_every", "log_every", "compile", "channels_last"}
"""Train fields that change how fast or where a run goes, not its result; they are left out of the variant id."""


class VariantSpec(BaseModel):
    """One CycleGAN training run. Every default is the paper's."""

    model_config = ConfigDict(extra="forbid")
    data: ComponentConfig = Field(description="the two image domains, e.g. {name: folder, root: datasets/horse2zebra}")
    generator: ComponentConfig = _component("resnet", n_blocks=9, ngf=64)
    discriminator: ComponentConfig = _component("patchgan", n_layers=3, ndf=64)
    norm: ComponentConfig = _component("instance")
    generator_norm: ComponentConfig | None = Field(None, description="norm of the generators only (default: `norm`)")
    discriminator_norm: ComponentConfig | None = Field(None, description="norm of the discriminators only (default: `norm`)")
    gan_loss: ComponentConfig = _component("lsgan")
    loss_weights: ComponentConfig = _component("constant", adversarial=1.0, cycle=10.0, identity=5.0)
    image_pool: ComponentConfig = _component("history", size=50)
    train: TrainConfig = Field(default_factory=TrainConfig)
    samples: int = Field(4, ge=0, le=64, description="fixed test images per domain shown in the sample grids")
    eval: EvalConfig = Field(default_factory=EvalConfig)


COMPONENT_FIELDS: dict[str, str] = {
    "data": "dataset",
    "generator": "generator",
    "discriminator": "discriminator",
    "generator_norm": "norm",
    "discriminator_norm": "norm",
    "gan_loss": "gan_loss",
    "loss_weights": "loss_weights",
    "image_pool": "image_pool",
    "eval.feature_extractor": "feature_extractor",
}


class SpecError(ValueError):
    """A spec is invalid. ``problems`` holds ``(dotted_path, message)`` pairs; ``source`` names the file."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source, self.problems = source, problems
        lines = [f"  {path}: {message}" if path else f"  {message}" for path, message in problems]
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{source}: {count}:\n" + "\n".join(lines))


class _DuplicateKeyError(ValueError):
    pass


class _StrictYamlLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate mapping keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise _DuplicateKeyError(f"duplicate key {duplicates[0]!r}")
    return dict(pairs)


def read_document(path: str | Path) -> Any:
    """Parse a YAML (.yaml/.yml) or JSON (.json) file; syntax errors and duplicate keys name the line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(str(path), [("", f"cannot read the file: {error.strerror or error}")]) from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text, object_pairs_hook=_refuse_duplicates)
        except json.JSONDecodeError as error:
            raise SpecError(f"{path}:{error.lineno}:{error.colno}", [("", f"invalid JSON: {error.msg}")]) from None
        except _DuplicateKeyError as error:
            raise SpecError(str(path), [("", f"invalid JSON: {error}")]) from None
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(where, [("", f"invalid YAML: {error.problem or error}")]) from None
    except yaml.YAMLError as error:
        raise SpecError(str(path), [("", f"invalid YAML: {error}")]) from None


class ResolvedVariant:
    """A validated variant spec with every component's parameters filled in with their defaults."""

    def __init__(self, spec: VariantSpec, components: dict[str, dict[str, Any]]):
        self.spec = spec
        self.components = components
        """Field name -> ``{"name": ..., **all parameters}`` for data, generator, ..., both norms."""

    def as_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (what checkpoints and trackers store)."""
        evaluation = {**self.spec.eval.model_dump(mode="json"), "feature_extractor": self.components["feature_extractor"]}
        components = {k: v for k, v in self.components.items() if k != "feature_extractor"}
        return {**components, "train": self.spec.train.model_dump(mode="json"), "samples": self.spec.samples, "eval": evaluation}

    @property
    def variant_id(self) -> str:
        """12 hex digits identifying the result: a hash of every field that can change it."""
        resolved = self.as_dict()
        resolved["train"] = {k: v for k, v in resolved["train"].items() if k not in RUNTIME_ONLY_FIELDS}
        del resolved["eval"]  # scoring settings change the reported numbers, not the trained networks
        canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def resolve_variant(data: Mapping[str, Any], registry: Registry, source: str = "<spec>", prefix: str = "") -> ResolvedVariant:
    """Validate a variant spec and each of its components; raise :class:`SpecError` listing every problem."""
    try:
        spec = VariantSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(source, pydantic_problems(error, prefix)) from None
    problems: list[tuple[str, str]] = []
    components: dict[str, dict[str, Any]] = {}
    for field, kind in COMPONENT_FIELDS.items():
        config = spec.eval.feature_extractor if field == "eval.feature_extractor" else getattr(spec, field)
        if config is None:
            field_path, config = "norm", spec.norm
        else:
            field_path = field
        where = ".".join(filter(None, [prefix, field_path]))
        try:
            component, params = registry.resolve(kind, config.model_dump(), where=where)  # type: ignore[arg-type]
        except InvalidParamsError as error:
            problems.extend(error.errors)
            continue
        except ComponentError as error:
            problems.append((f"{where}.name", str(error)))
            continue
        components[field.removeprefix("eval.")] = {"name": component.name, **params.model_dump(mode="json")}
    if problems:
        raise SpecError(source, list(dict.fromkeys(problems)))
    return ResolvedVariant(spec, components)


def load_variant(path: str | Path, registry: Registry) -> ResolvedVariant:
    """Read and resolve a variant spec file (YAML or JSON)."""
    data = read_document(path)
    if not isinstance(data, Mapping):
        raise SpecError(str(path), [("", f"expected a mapping of variant fields, got {type(data).__name__}")])
    return resolve_variant(data, registry, source=str(path))
