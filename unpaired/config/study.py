"""Study specs: a base variant, grid axes and/or named variants, and seeds, expanded into concrete runs.

Named variants are deep-merged into the base; a component given another ``name``
keeps only the old parameters that the new component also has (see :func:`merge`).
Grid axes then set dotted paths (cartesian product), on the base or on each named
variant. Each seed of each variant is one run.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from unpaired.config.command_line import override_study
from unpaired.config.documents import read_document
from unpaired.config.execution import resolve_execution
from unpaired.config.overrides import flatten, merge, set_path, with_default_components
from unpaired.config.resolved import ResolvedVariant, resolve_variant
from unpaired.config.spec import MAX_SEED, SpecError, TrainConfig, VariantSpec, component_slots
from unpaired.errors import pydantic_problems
from unpaired.plugin_api.components import Choice
from unpaired.plugin_api.registry import ComponentError, Registry

STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class TrackingConfig(BaseModel):
    """Where and what the study logs to MLflow."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="log the study to MLflow")
    uri: str | None = Field(None, description="tracking URI; $MLFLOW_TRACKING_URI wins; default: MLflow's (sqlite:///mlflow.db)")
    log_generators: bool = Field(True, description="attach the final generators to each run as artifacts")
    metric: str | None = Field(
        None,
        description="the score the study report ranks variants by, a metric's <name>_mean, _a2b or _b2a (default: the "
        "base's first metric's, or the first score every variant has)",
    )
    timeout: float = Field(
        10.0,
        ge=2,
        le=3600,
        description="seconds (2 to 3600) a run may wait on the tracking server: one that does not answer "
        "by then is given up for that run, and training goes on (the next `unpaired run` logs what is missing)",
    )


class StudySpec(BaseModel):
    """An ablation: which variants of a base to train, and with which seeds."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=STUDY_NAME, description="names the study (MLflow experiment, default output folder)")
    description: str = Field("", description="what the study is about: dataset, setting, anything a reader of its report needs")
    question: str = Field("", description="the question the study answers, in one sentence (its report's headline)")
    base: dict[str, Any] = Field(description="a complete variant spec; every field not given has the paper's default")
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict, description="dotted path -> values; every combination is a variant"
    )
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict, description="named overrides of the base, merged deeply (combinable with grid)")
    seeds: Annotated[list[Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]], Field(min_length=1)] = Field(
        default_factory=lambda: [0], description="each variant is trained once per seed (train.seed)"
    )
    baseline: str | None = Field(None, description="the variant differences are measured against (default: the base)")
    max_variants: int = Field(10_000, ge=1, description="more variants than this (grid points x named variants) are refused before any is built")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    execution: dict[str, Any] = Field(
        default_factory=dict,
        description="where the runs train: {executor: NAME, ...its settings} "
        "(`unpaired plugins` lists the executors; default: this machine, one run at a time)",
    )


VARIANT_NOT_STUDY = (
    "this is a variant spec (its keys are a variant's: data, generator, train, ...), not a study: `unpaired train` trains it "
    "(and checks it first); to plan or run it as a study, put it under `base:` beside a `name:`"
)
"""The one problem of a variant spec given where a study is read."""
VARIANT_FIELD = "a variant's field, not a study's: put it under `base:` (every variant's) or in one of `variants:`"
MAX_NAME = 255
"""The longest variant name: its runs' folder is named after it (``variant_folder_name``), and file systems allow 255 bytes."""


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: a variant trained with one seed."""

    variant: str
    seed: int
    overrides: dict[str, Any]
    """The dotted paths the variant changes relative to the base, with their values."""
    resolved: ResolvedVariant

    @property
    def run_id(self) -> str:
        """Identifies this run's result (see :attr:`ResolvedVariant.run_id`)."""
        return self.resolved.run_id

    @property
    def variant_key(self) -> str:
        """Identifies the variant's configuration: the same for all its seeds."""
        return self.resolved.variant_key


@dataclass(frozen=True)
class Study:
    """A validated study and its runs, in order: variants as listed, then seeds."""

    spec: StudySpec
    source: str
    runs: list[PlannedRun]
    baseline: str
    metric: str | None
    """The score the report ranks by: ``tracking.metric``, else the first score the baseline and every variant have."""
    execution: Choice
    """The executor that trains the runs (``execution.executor``, else the default one), its settings validated."""
    execution_set_aside: list[str]
    """A line for each setting of ``execution`` that belongs to another executor than that one (see :func:`resolve_execution`)."""

    @property
    def variant_names(self) -> list[str]:
        return list(dict.fromkeys(run.variant for run in self.runs))

    @property
    def ranking_note(self) -> str | None:
        """Why the variants are not ranked by the baseline's headline score (a one-way method lacks ``fid_mean``), or None."""
        headline = _headline(self.runs, self.baseline)
        if self.spec.tracking.metric is not None or headline in (None, self.metric):
            return None
        lacking = list(dict.fromkeys(run.variant for run in self.runs if headline not in run.resolved.score_columns))
        ranked = f"the variants are ranked by {self.metric}" if self.metric else "no score is shared by every variant to rank them by"
        return (
            f"{ranked}: {headline}, the baseline's headline score, is not a score of {', '.join(lacking)} (a method that "
            "translates one direction is scored in that direction only); tracking.metric chooses the score"
        )

    @property
    def best_epoch_note(self) -> str | None:
        """The variants whose ``eval.every`` scores no epoch before their last (it is not below the epochs they train),
        so that their best epoch can only be the last one, or None."""
        late = {
            run.variant: run.resolved.eval.select_best_by
            for run in self.runs
            if 0 < run.resolved.eval.every >= run.resolved.train.total_epochs and run.resolved.eval.select_best_by
        }
        if not late:
            return None
        scores = ", ".join(dict.fromkeys(f"{score}_best" for score in late.values()))
        return (
            f"in {', '.join(late)}, eval.every is not below the epochs a run trains: no epoch before the last is scored, "
            f"so the best epoch is the last and {scores} the final score; lower eval.every to choose among epochs"
        )


def _headline(runs: list[PlannedRun], baseline: str) -> str | None:
    """The baseline's headline score: the one its best epoch is chosen by (its first metric's mean, e.g. ``fid_mean``)."""
    return next(run.resolved.eval.select_best_by for run in runs if run.variant == baseline)


def _label_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("name", json.dumps(value, sort_keys=True)))
    return json.dumps(value) if not isinstance(value, str) else value


def axis_labels(values: list[Any]) -> list[str]:
    """How each value of a grid axis appears in variant names, one label per distinct value: a component by its name,
    followed by the parameters that tell it from the axis's other values of that name (``synthetic(n_train=4)``); any
    other value as written; where labels would still be shared (``1`` and ``"1"``), the values in JSON."""
    short = [_label_value(value) for value in values]
    labels = []
    for value, label in zip(values, short):
        namesakes = [other for other, said in zip(values, short) if said == label and other != value]
        if isinstance(value, Mapping) and namesakes:
            differing = [key for key in value if key != "name" and any(not isinstance(o, Mapping) or o.get(key) != value[key] for o in namesakes)]
            label += f"({','.join(f'{key}={_label_value(value[key])}' for key in differing)})"
        labels.append(label)
    shared = {label for label, value in zip(labels, values) if any(said == label and other != value for said, other in zip(labels, values))}
    return [json.dumps(value, sort_keys=True) if label in shared else label for label, value in zip(labels, values)]


def _grid_labels(paths: list[str]) -> dict[str, str]:
    """Short axis names for variant names: the last path segment (the component for ``x.name``)
    unless two axes share it."""
    last = [p.removesuffix(".name").rsplit(".", 1)[-1] for p in paths]
    return {p: (short if last.count(short) == 1 else p) for p, short in zip(paths, last)}


def _check_grid_path(path: str, base: Mapping[str, Any], registry: Registry) -> str | None:
    """Why ``path`` cannot be a grid axis, or None when it can."""
    head, *rest = path.split(".")
    if head not in VariantSpec.model_fields:
        return f"no field {head!r} in a variant; the fields are {', '.join(VariantSpec.model_fields)}"
    if not rest:
        return None
    if head == "train":
        if rest[0] not in TrainConfig.model_fields:
            return f"no field {rest[0]!r} in train; the fields are {', '.join(TrainConfig.model_fields)}"
        return None
    slot = component_slots().get(head)
    if slot is None or rest[0] == "name":
        return None
    filled = with_default_components(base, registry)
    config = filled.get(head) or filled.get(slot.fallback or "") or {"name": None}
    try:
        component = registry.get(slot.kind, str(config.get("name")))
    except ComponentError:
        return None  # the unknown component itself is reported when the variants resolve
    params = list(component.params_model.model_fields)
    if rest[0] not in params:
        return f"{slot.kind} {component.name!r} has no parameter {rest[0]!r}; it has {', '.join(params) or 'none'}"
    return None


def _study_spec(data: Any, source: str) -> StudySpec:
    """The study's fields, validated; a variant spec, or a variant's field beside a study's, is named as such."""
    if not isinstance(data, Mapping):
        raise SpecError(source, [("", f"expected a mapping with name, base, grid/variants and seeds, got {type(data).__name__}")])
    if "base" not in data and set(data) & set(VariantSpec.model_fields) and not set(data) & {"name", "grid", "variants"}:
        raise SpecError(source, [("", VARIANT_NOT_STUDY)])
    try:
        return StudySpec.model_validate(data)
    except ValidationError as error:
        problems = pydantic_problems(error, StudySpec)
        raise SpecError(source, [(path, VARIANT_FIELD if path in VariantSpec.model_fields else message) for path, message in problems]) from None


def plan_study(data: Any, registry: Registry, source: str = "<study>", inputs: bool = True) -> Study:
    """Validate a study and expand it into runs; raise :class:`SpecError` listing every problem at once (``inputs``:
    whether the data must be found, see :func:`resolve_variant`)."""
    spec = _study_spec(data, source)
    problems: list[tuple[str, str]] = []
    try:
        base = resolve_variant(spec.base, registry, source, prefix="base", inputs=inputs)
    except SpecError as error:
        base, problems = None, list(error.problems)
    of_base = [(path.removeprefix("base"), message) for path, message in problems]
    axes = _grid_axes(spec, registry, problems)
    try:
        execution, set_aside = resolve_execution(spec.execution, registry)
    except SpecError as error:
        problems.extend(error.problems)
    if len(set(spec.seeds)) != len(spec.seeds):
        problems.append(("seeds", f"each seed may appear once (got {spec.seeds})"))
    if too_many := _too_many_variants(spec):
        raise SpecError(source, [*dict.fromkeys(problems), ("grid", too_many)])
    try:  # the variants too, along the valid axes: every problem at once, but those a variant inherits from the base
        runs, names_by_key = _expand(spec, axes, registry, source, inputs)
    except SpecError as error:
        problems += [(path, message) for path, message in error.problems if not any(path.endswith(p) and message == m for p, m in of_base)]
    if problems or base is None:
        raise SpecError(source, list(dict.fromkeys(problems)))

    names = list(names_by_key.values())
    baseline = spec.baseline or names_by_key.get(base.variant_key, names[0])
    if baseline not in names:
        raise SpecError(source, [("baseline", f"no variant named {baseline!r}; the variants are {', '.join(names)}")])
    return Study(spec, source, runs, baseline, _ranking_metric(spec, runs, baseline, source), execution, set_aside)


def _grid_axes(spec: StudySpec, registry: Registry, problems: list[tuple[str, str]]) -> dict[str, list[Any]]:
    """The grid's axes whose path names a field of the base's components; the others go to ``problems``."""
    axes = {}
    for path, values in spec.grid.items():
        if reason := _check_grid_path(path, spec.base, registry):
            problems.append((f"grid.{path}", reason))
        else:
            axes[path] = values
    return axes


def _too_many_variants(spec: StudySpec) -> str | None:
    """Why the study has more variants than ``max_variants`` (counted, not built), or None."""
    count = max(len(spec.variants), 1) * math.prod(len(values) for values in spec.grid.values())
    if count <= spec.max_variants:
        return None
    factors = [f"{len(values)} {path}" for path, values in spec.grid.items()] + ([f"{len(spec.variants)} named"] if spec.variants else [])
    return f"{count:,} variants ({' x '.join(factors)}) is more than max_variants {spec.max_variants:,}; set it higher"


def _ranking_metric(spec: StudySpec, runs: list[PlannedRun], baseline: str, source: str) -> str | None:
    """``tracking.metric``, or the baseline's headline score (its first metric's mean, e.g. ``fid_mean``) when every variant
    has it, else the first score of the baseline that every variant has; a score that only some variants
    have cannot rank them all (a one-way method has no ``fid_mean``), which is a problem naming them."""
    columns = {run.variant: run.resolved.score_columns for run in runs}
    headline = _headline(runs, baseline)
    candidates = dict.fromkeys([headline, *columns[baseline]])
    shared = [column for column in candidates if column is not None and all(column in have for have in columns.values())]
    metric = spec.tracking.metric
    lacking = [variant for variant, have in columns.items() if metric not in have]
    if metric is not None and lacking:  # a typo when no variant has it: compare and the report would have nothing to rank by
        which = "any variant" if len(lacking) == len(columns) else f"{', '.join(lacking)}, so it cannot rank every variant"
        scores = ", ".join(shared) or ("none" if any(columns.values()) else "none (eval.metrics scores nothing)")
        raise SpecError(source, [("tracking.metric", f"{metric!r} is not a score of {which}; the scores all variants have: {scores}")])
    return metric or (shared[0] if shared else None)


def _expand(spec: StudySpec, grid: dict[str, list[Any]], registry: Registry, source: str, inputs: bool) -> tuple[list[PlannedRun], dict[str, str]]:
    """Every named variant x point of ``grid``, resolved (once) and given each seed; and the variant name of
    each configuration key. Raises :class:`SpecError` with the problems of every variant."""
    named = list(spec.variants.items()) or [("", {})]
    labels = _grid_labels(list(grid))
    value_labels = {path: axis_labels(values) for path, values in grid.items()}
    combinations = [dict(zip(grid, choice)) for choice in itertools.product(*(range(len(values)) for values in grid.values()))]
    problems: list[tuple[str, str]] = []
    runs: list[PlannedRun] = []
    names_by_key: dict[str, str] = {}
    names: set[str] = set()  # the values of names_by_key, looked up once per variant
    for (variant_name, changes), combination in itertools.product(named, combinations):
        label = ",".join(f"{labels[path]}={value_labels[path][index]}" for path, index in combination.items())
        name = ",".join(part for part in (variant_name, label) if part) or "base"
        values = {path: grid[path][index] for path, index in combination.items()}
        merged = merge(with_default_components(spec.base, registry), changes, registry)
        for path, value in values.items():
            merged = set_path(merged, path, value, registry)
        where = f"variants.{variant_name}" if variant_name and not combination else f"variant[{name}]"
        if name.strip(".") == "":
            problems.append(
                ("variants", f"{name!r} cannot name a variant: it names a folder outside the output folder; give it a name with a letter or digit")
            )
            continue
        if len(name) > MAX_NAME:  # its runs' folder is named after it, one character for one
            problems.append((where, f"the variant's name is {len(name)} characters, and a folder's at most {MAX_NAME}: use named variants"))
            continue
        try:
            resolved = resolve_variant(merged, registry, source, prefix=where, inputs=inputs)
        except SpecError as error:
            problems.extend(error.problems)
            continue
        if resolved.variant_key in names_by_key:
            other = names_by_key[resolved.variant_key]
            problems.append((where, f"resolves to the same configuration as variant {other!r} (id {resolved.variant_key}); remove one"))
            continue
        if name in names:  # two configurations pooled under one name would be compared as one variant
            problems.append((where, f"another configuration of the grid is named {name!r} too: name the variants yourself (variants:)"))
            continue
        names_by_key[resolved.variant_key] = name
        names.add(name)
        overrides = {**flatten(changes), **values}
        runs += [PlannedRun(name, seed, overrides, with_seed(resolved, seed)) for seed in spec.seeds]
    if problems:
        raise SpecError(source, list(dict.fromkeys(problems)))
    return runs, names_by_key


def with_seed(resolved: ResolvedVariant, seed: int) -> ResolvedVariant:
    """The same variant trained with ``seed``."""
    return dataclasses.replace(resolved, train=resolved.train.model_copy(update={"seed": seed}))


def load_study(path: str | Path, registry: Registry, overrides: Sequence[str] = (), inputs: bool = True) -> Study:
    """Read a study file (YAML or JSON), apply command-line ``overrides`` (``train.epochs=5``, ``generator.n_blocks=6,9``:
    see :mod:`unpaired.config.command_line`), validate and expand it (``inputs``: see :func:`plan_study`)."""
    data = read_document(path)
    if overrides and isinstance(data, Mapping):
        data = override_study(data, overrides, registry, list(StudySpec.model_fields))
    return plan_study(data, registry, source=str(path), inputs=inputs)
