"""A resolved variant: every component looked up and its parameters validated, once.

Resolving a spec fills in what it leaves out (default components, their parameter
defaults) and validates everything, listing every problem at once. What comes out holds
the chosen components with their validated parameters, ready to build: the engine and
the executors never look a component up or validate it again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from unpaired.config.command_line import override_variant
from unpaired.config.documents import read_document
from unpaired.config.spec import RUNTIME_ONLY_FIELDS, ComponentConfig, SpecError, TrainConfig, VariantSpec, component_slots
from unpaired.plugin_api.components import Choice, describe
from unpaired.plugin_api.methods import unused_slots
from unpaired.plugin_api.metrics import Metric, method_directions, score_columns
from unpaired.errors import pydantic_problems
from unpaired.plugin_api.registry import ComponentError, InvalidParamsError, Registry


@dataclass(frozen=True)
class ResolvedEval:
    """How the trained generators are scored (see ``EvalConfig``), with the metrics and the feature extractor chosen."""

    metrics: tuple[Choice, ...]
    every: int
    batch_size: int
    feature_extractor: Choice
    select_best_by: str | None
    """The score column whose best epoch is kept (with ``every``); None when nothing is scored."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "metrics": [m.as_dict() for m in self.metrics],
            "every": self.every,
            "batch_size": self.batch_size,
            "select_best_by": self.select_best_by,
            "feature_extractor": self.feature_extractor.as_dict(),
        }

    def build_metrics(self) -> dict[str, Metric]:
        """Each chosen metric, built afresh, by name. One whose factory raises is named (a ``ComponentError``) instead of
        shown as a plugin's traceback."""
        return {choice.component.name: _built_metric(choice) for choice in self.metrics}

    @functools.cached_property
    def uses_features(self) -> bool:
        """Whether a metric compares feature rows, so that scoring needs ``feature_extractor`` (False when every metric
        compares images, or none is chosen). Builds every metric once to ask it (a metric's factory is cheap), so one that
        cannot be built is named here, before anything trains."""
        return any(metric.uses_features for metric in self.build_metrics().values())

    def identity(self, extractor_identity: str) -> str:
        """12 hex digits identifying how scores are made: each metric and, when a metric uses features, the feature
        extractor, named by distribution and component with all their parameters and their distributions' versions, and
        ``extractor_identity`` (what the built extractor says of itself, e.g. its weights file; ignored without features).
        The test images follow from the data parameters, part of the run id. A new version of a package that only scores
        therefore makes a run *rescore*, never *stale*."""
        made_by: dict[str, Any] = {"metrics": [m.identity() for m in self.metrics], "versions": self.plugins()}
        if self.uses_features:
            made_by |= {"extractor": self.feature_extractor.identity(), "extractor_identity": extractor_identity}
        return _hash(made_by)

    def plugins(self) -> dict[str, str]:
        """Distribution -> version of the packages providing the metrics and, when a metric uses features, the feature
        extractor."""
        return _versions([*self.metrics, *([self.feature_extractor] if self.uses_features else [])])


@dataclass(frozen=True)
class ResolvedVariant:
    """A validated variant: each component slot with its chosen component and validated parameters."""

    method: Choice
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
    fitted: tuple[str, ...] = ()
    """What the method chose from the other components, one line each (``Method.fit_params``): ``plan`` shows them."""

    _SLOTS = ("method", "data", "generator", "discriminator", "generator_norm", "discriminator_norm", "gan_loss", "loss_weights", "image_pool")

    @property
    def slots(self) -> tuple[str, ...]:
        """The component slots this variant's training uses: every one but those its method leaves unused."""
        unused = unused_slots(self.method.component.factory)
        return tuple(slot for slot in self._SLOTS if slot not in unused)

    def as_dict(self) -> dict[str, Any]:
        """The resolved variant as plain data: what ``spec.json``, checkpoints and trackers hold, and what
        :func:`resolve_variant` turns back into the same variant."""
        return {
            **{slot: getattr(self, slot).as_dict() for slot in self.slots},
            "train": self.train.model_dump(mode="json"),
            "samples": self.samples,
            "eval": self.eval.as_dict(),
        }

    def plugins(self) -> dict[str, str]:
        """Distribution -> version of every package providing one of the variant's components (its provenance)."""
        return dict(sorted({**self.training_plugins(), **self.eval.plugins()}.items()))

    def training_plugins(self) -> dict[str, str]:
        """Distribution -> version of the packages providing the components training uses: a new version of one may
        train other networks (the run is *stale*); those that only score are in ``eval.plugins()`` (they rescore)."""
        return _versions(getattr(self, slot) for slot in self.slots)

    def _digest(self, *train_fields_left_out: str) -> str:
        """A hash of what training depends on: each component by distribution and name (so ``dist:name`` and a plain
        name of the same component agree) with its parameters, and the train fields that change results. Scoring
        settings are left out: they change the reported numbers, not the trained networks."""
        left_out = RUNTIME_ONLY_FIELDS.union(train_fields_left_out)
        train = {k: v for k, v in self.train.model_dump(mode="json").items() if k not in left_out}
        return _hash({**{slot: getattr(self, slot).identity() for slot in self.slots}, "train": train, "samples": self.samples})

    @property
    def score_columns(self) -> list[str]:
        """The headline score columns its runs record: each metric in each direction its method translates."""
        return _variant_score_columns(self.method, self.eval.metrics)

    @property
    def run_id(self) -> str:
        """12 hex digits identifying the run's result: a hash of every field that can change it, the seed included."""
        return self._digest()

    @property
    def variant_key(self) -> str:
        """12 hex digits identifying the configuration whatever the seed: the same for every seed of a variant."""
        return self._digest("seed")


def _variant_score_columns(method: Choice, metrics: tuple[Choice, ...]) -> list[str]:
    directions = method_directions(method.component.factory)
    return [column for metric in metrics for column in score_columns(metric.component.name, directions)]


def _built_metric(choice: Choice) -> Metric:
    try:
        return choice.build()
    except Exception as error:  # a plugin's bug: named, before anything trains, instead of a traceback
        raise ComponentError(
            f"{describe(choice, 'metric')} could not be built ({type(error).__name__}: {error}): fix or update its plugin, "
            "or leave it out of eval.metrics"
        ) from error


def _versions(chosen: Iterable[Choice]) -> dict[str, str]:
    return {c.component.distribution: c.component.version for c in sorted(chosen, key=lambda c: c.component.distribution)}


def _hash(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def resolve_variant(data: Mapping[str, Any], registry: Registry, source: str = "<spec>", prefix: str = "", inputs: bool = True) -> ResolvedVariant:
    """Validate a variant spec and each of its components; raise :class:`SpecError` listing every problem.

    ``prefix`` is the dotted path of the variant in its file (e.g. ``base``), used in the problems. ``inputs``: also
    ask the dataset whether its data can be found (``UnpairedData.input_problems``); commands that only read results
    leave that out.
    """
    spec, problems = _validated(data, source, prefix)
    chosen = _resolve_components(spec, registry, prefix, problems)
    fitted: list[str] = []
    if "method" in chosen:  # the method's defaults and rules that follow from the other components (those that resolved)
        chosen["method"], fitted = _fitted_method(chosen["method"], chosen)
        problems += _unused_slot_problems(chosen["method"], spec, registry, prefix) + _method_problems(chosen["method"], chosen, prefix)
    if inputs and "data" in chosen and (check := getattr(chosen["data"].component.factory, "input_problems", None)):
        problems += [(".".join(filter(None, [prefix, "data", field])), message) for field, message in check(chosen["data"].params)]
    evaluation, where = spec.eval, ".".join(filter(None, [prefix, "eval"]))
    metrics = _resolve_metrics(evaluation.metrics, registry, f"{where}.metrics", problems)
    select_best_by = evaluation.select_best_by
    if "method" in chosen and metrics:
        directions = method_directions(chosen["method"].component.factory)
        columns = _variant_score_columns(chosen["method"], metrics)
        if select_best_by is None:  # the first metric's mean over the directions, or its one direction
            select_best_by = score_columns(metrics[0].component.name, directions)[-1]
        elif select_best_by not in columns:
            problems.append((f"{where}.select_best_by", f"{select_best_by!r} is not a score of this variant; its scores are {', '.join(columns)}"))
    if problems:
        raise SpecError(source, list(dict.fromkeys(problems)))
    resolved_eval = ResolvedEval(metrics, evaluation.every, evaluation.batch_size, chosen["eval.feature_extractor"], select_best_by)
    return ResolvedVariant(
        **{path: choice for path, choice in chosen.items() if "." not in path and path != "norm"},
        train=spec.train,
        samples=spec.samples,
        eval=resolved_eval,
        fitted=tuple(fitted),
    )


def _validated(data: Mapping[str, Any], source: str, prefix: str) -> tuple[VariantSpec, list[tuple[str, str]]]:
    """The variant spec, with the problems of its invalid sections (left out of it, so that the valid ones are checked
    further all the same); :class:`SpecError` when even that fails."""
    try:
        return VariantSpec.model_validate(data), []
    except ValidationError as error:
        problems = pydantic_problems(error, VariantSpec, prefix)
        broken = {str(e["loc"][0]) for e in error.errors() if e["loc"]}
    try:
        return VariantSpec.model_validate({key: value for key, value in data.items() if key not in broken}), problems
    except ValidationError:
        raise SpecError(source, problems) from None


def _resolve_components(spec: VariantSpec, registry: Registry, prefix: str, problems: list[tuple[str, str]]) -> dict[str, Choice]:
    """Slot path -> the component chosen for it (or its default, or its fallback slot's); what fails goes to ``problems``."""
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
    return chosen


def _unused_slot_problems(method: Choice, spec: VariantSpec, registry: Registry, prefix: str) -> list[tuple[str, str]]:
    """A slot the method never builds, set to anything but its plain default: the setting would change nothing but look
    like it does (a study fills every slot with its default before its axes apply, hence the default is allowed)."""
    problems = []
    for slot in unused_slots(method.component.factory):
        config = _get(spec, slot)
        if config is not None and config.model_dump() != {"name": registry.default(component_slots()[slot].kind)}:
            problems.append(
                (
                    ".".join(filter(None, [prefix, slot])),
                    f"the method {method.name!r} does not use the {slot} slot, so setting it changes nothing: "
                    "set it only in the variants of methods that use it",
                )
            )
    return problems


def _fitted_method(method: Choice, chosen: Mapping[str, Choice]) -> tuple[Choice, list[str]]:
    """The method with the parameters it fits to the variant's other components, and what it chose (``Method.fit_params``)."""
    fit = getattr(method.component.factory, "fit_params", None)
    if fit is None:
        return method, []
    params, lines = fit(method.params, _other_components(chosen))
    return dataclasses.replace(method, params=params), list(lines)


def _other_components(chosen: Mapping[str, Choice]) -> dict[str, Choice]:
    return {slot: choice for slot, choice in chosen.items() if "." not in slot and slot != "method"}


def _method_problems(method: Choice, chosen: Mapping[str, Choice], prefix: str) -> list[tuple[str, str]]:
    """What the method says rules it out with the variant's other components (``Method.variant_problems``)."""
    check = getattr(method.component.factory, "variant_problems", None)
    if check is None:
        return []
    return [(".".join(filter(None, [prefix, field])), message) for field, message in check(method.params, _other_components(chosen))]


def _resolve_metrics(
    configs: list[str | ComponentConfig] | None, registry: Registry, where: str, problems: list[tuple[str, str]]
) -> tuple[Choice, ...]:
    """The metrics ``eval.metrics`` names (each a name or ``{name, **params}``; None: every default metric)."""
    if configs is None:
        configs = [{"name": name} for name in registry.defaults("metric")]  # type: ignore[misc]
    chosen = []
    for index, given in enumerate(configs):
        config = {"name": given} if isinstance(given, str) else given if isinstance(given, dict) else given.model_dump()
        try:
            chosen.append(registry.resolve("metric", config, where=f"{where}[{index}]"))
        except InvalidParamsError as error:
            problems.extend(error.errors)
        except ComponentError as error:
            problems.append((f"{where}[{index}]", str(error)))
    names = [choice.component.name for choice in chosen]
    problems += [(where, f"metric {name!r} is listed twice") for name in sorted({n for n in names if names.count(n) > 1})]
    return tuple(chosen)


def _get(spec: VariantSpec, path: str) -> Any:
    value: Any = spec
    for part in path.split("."):
        value = getattr(value, part)
    return value


STUDY_SETTINGS = ("name", "description", "question", "grid", "variants", "seeds", "baseline", "max_variants", "tracking", "execution")
"""The fields of a study besides its ``base``: none is a variant's (see :class:`unpaired.config.study.StudySpec`)."""


def load_variant(path: str | Path, registry: Registry, overrides: Sequence[str] = ()) -> ResolvedVariant:
    """Read a variant spec file (YAML or JSON), set command-line ``overrides`` (``train.epochs=5``) and resolve it. A
    variant alone (``unpaired train``) is never tracked in MLflow: a study's setting given to it says so."""
    data = read_document(path)
    if not isinstance(data, Mapping):
        raise SpecError(str(path), [("", f"expected a mapping of variant fields, got {type(data).__name__}")])
    try:
        return resolve_variant(override_variant(data, overrides, registry), registry, source=str(path))
    except SpecError as error:
        raise SpecError(error.source, [(path, _study_setting(path) or message) for path, message in error.problems]) from None


def _study_setting(key: str) -> str | None:
    """What to say of a study's setting given to a variant alone, or None if ``key`` is none."""
    if key not in STUDY_SETTINGS:
        return None
    untracked = " (`unpaired train` is never tracked in MLflow: there is nothing to switch off)" if key == "tracking" else ""
    return f"a study's setting, not a variant's{untracked}; to use it, make this spec the base of a study and `unpaired run` it"
