"""A resolved variant: every component looked up and its parameters validated, once.

Resolving a spec fills in what it leaves out (default components, their parameter
defaults) and validates everything, listing every problem at once. What comes out holds
the chosen components with their validated parameters, ready to build: the engine and
the executors never look a component up or validate it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from unpaired.config.documents import read_document
from unpaired.config.spec import RUNTIME_ONLY_FIELDS, SpecError, TrainConfig, VariantSpec, component_slots
from unpaired.plugin_api.components import Choice
from unpaired.errors import pydantic_problems
from unpaired.plugin_api.registry import ComponentError, InvalidParamsError, Registry


@dataclass(frozen=True)
class ResolvedEval:
    """How the trained generators are scored (see ``EvalConfig``), with the feature extractor chosen."""

    fid: bool
    every: int
    batch_size: int
    feature_extractor: Choice


@dataclass(frozen=True)
class ResolvedVariant:
    """A validated variant: each component slot with its chosen component and validated parameters."""

    data: Choice
    generator: Choice
    discriminator: Choice
    generator_norm: Choice
    discriminator_norm: Choice
    gan_loss: Choice
    loss_weights: Choice
    image_pool: Choice
    train: TrainConfig
    samples: int
    eval: ResolvedEval

    _SLOTS = ("data", "generator", "discriminator", "generator_norm", "discriminator_norm", "gan_loss", "loss_weights", "image_pool")

    def as_dict(self) -> dict[str, Any]:
        """The resolved variant as plain data: what ``spec.json``, checkpoints and trackers hold, and what
        :func:`resolve_variant` turns back into the same variant."""
        slots = self._SLOTS
        evaluation = {"fid": self.eval.fid, "every": self.eval.every, "batch_size": self.eval.batch_size,
                      "feature_extractor": self.eval.feature_extractor.as_dict()}
        return {**{slot: getattr(self, slot).as_dict() for slot in slots},
                "train": self.train.model_dump(mode="json"), "samples": self.samples, "eval": evaluation}

    def plugins(self) -> dict[str, str]:
        """Distribution -> version of every package providing one of the variant's components (its provenance)."""
        chosen = [getattr(self, slot) for slot in self._SLOTS] + [self.eval.feature_extractor]
        return {c.component.distribution: c.component.version for c in sorted(chosen, key=lambda c: c.component.distribution)}

    def _digest(self, *train_fields_left_out: str) -> str:
        resolved = self.as_dict()
        left_out = RUNTIME_ONLY_FIELDS.union(train_fields_left_out)
        resolved["train"] = {k: v for k, v in resolved["train"].items() if k not in left_out}
        del resolved["eval"]  # scoring settings change the reported numbers, not the trained networks
        canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def run_id(self) -> str:
        """12 hex digits identifying the run's result: a hash of every field that can change it, the seed included."""
        return self._digest()

    @property
    def variant_key(self) -> str:
        """12 hex digits identifying the configuration whatever the seed: the same for every seed of a variant."""
        return self._digest("seed")


def resolve_variant(data: Mapping[str, Any], registry: Registry, source: str = "<spec>", prefix: str = "") -> ResolvedVariant:
    """Validate a variant spec and each of its components; raise :class:`SpecError` listing every problem.

    ``prefix`` is the dotted path of the variant in its file (e.g. ``base``), used in the problems.
    """
    try:
        spec = VariantSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(source, pydantic_problems(error, VariantSpec, prefix)) from None
    problems: list[tuple[str, str]] = []
    chosen: dict[str, Choice] = {}
    for path, slot in component_slots().items():
        config = _get(spec, path)
        where = ".".join(filter(None, [prefix, path]))
        if config is None and slot.fallback is not None:
            if slot.fallback in chosen:
                chosen[path] = chosen[slot.fallback]
            continue
        try:
            config = {"name": registry.default(slot.kind)} if config is None else config.model_dump()
            chosen[path] = registry.resolve(slot.kind, config, where=where)
        except InvalidParamsError as error:
            problems.extend(error.errors)
        except ComponentError as error:
            problems.append((f"{where}.name", str(error)))
    if problems:
        raise SpecError(source, list(dict.fromkeys(problems)))
    evaluation = spec.eval
    return ResolvedVariant(
        **{path: choice for path, choice in chosen.items() if "." not in path and path != "norm"},
        train=spec.train,
        samples=spec.samples,
        eval=ResolvedEval(evaluation.fid, evaluation.every, evaluation.batch_size, chosen["eval.feature_extractor"]),
    )


def _get(spec: VariantSpec, path: str) -> Any:
    value: Any = spec
    for part in path.split("."):
        value = getattr(value, part)
    return value


def load_variant(path: str | Path, registry: Registry) -> ResolvedVariant:
    """Read and resolve a variant spec file (YAML or JSON)."""
    data = read_document(path)
    if not isinstance(data, Mapping):
        raise SpecError(str(path), [("", f"expected a mapping of variant fields, got {type(data).__name__}")])
    return resolve_variant(data, registry, source=str(path))
