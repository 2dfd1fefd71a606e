"""Overrides written on the command line, as Hydra users write them: ``train.epochs=5`` sets a field, ``key=a,b`` a grid axis.

Values are YAML scalars (``5``, ``2e-4``, ``true``, ``null``... as YAML reads them) or YAML flow collections
(``[input, down1]``). In a study, a dotted path into a variant (``generator.n_blocks=6``) sets the base and replaces any
grid axis of that path; a study field (``seeds=[0,1,2]``, ``tracking.enabled=false``) sets that field. A value with
commas outside brackets and quotes (``generator.n_blocks=6,9``) is a grid axis over those values. An override is
applied to the study as read, before anything is validated: the study is then the one the file would be with that
edit, with the same run ids; ``study.json`` records it as resolved, and each MLflow child run its resolved variant.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from unpaired.config.documents import TOO_DEEP, shape_problem
from unpaired.config.overrides import set_path
from unpaired.config.spec import SpecError
from unpaired.errors import UsageError
from unpaired.plugin_api.registry import Registry

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""A number in exponent notation without a dot, which YAML 1.1 reads as a string."""
COMMAND_LINE = "the overrides on the command line"
"""The source its problems name."""
VARIANT_PARTS = ("base", "grid", "variants")
"""The study fields a ``key=value`` override never names directly: a dotted path into a variant sets the base."""


def split_override(text: str) -> tuple[str, list[Any]]:
    """``path=value`` -> (path, the values): one for a plain value, several for ``a,b,...`` (commas outside brackets
    and quotes). Raises :class:`UsageError` for an override without ``=`` or a path."""
    path, equals, raw = text.partition("=")
    path = path.strip()
    if not equals or not path or " " in path:
        raise UsageError(f"{text!r} is not an override: write KEY=VALUE (train.epochs=5) or KEY=A,B for a grid axis (generator.n_blocks=6,9)")
    try:
        values = [_value(part) for part in _top_level_parts(raw)]
    except yaml.YAMLError as error:
        raise UsageError(f"{text!r}: the value is not YAML ({str(error).splitlines()[0]})") from None
    except RecursionError:
        raise UsageError(f"{path}: the value is not usable: {TOO_DEEP}") from None
    if problem := shape_problem(values):
        raise UsageError(f"{path}: the value is not usable: {problem}")
    return path, values


def _value(text: str) -> Any:
    """``text`` as YAML reads it, and numbers YAML 1.1 leaves as strings (``2e-4``) as numbers."""
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _top_level_parts(raw: str) -> list[str]:
    """``raw`` split at its commas outside ``[]``, ``{}`` and quotes."""
    parts = []
    depth = 0
    quote = ""
    current = ""
    for char in raw:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    return [*parts, current]


def override_study(data: Mapping[str, Any], overrides: Sequence[str], registry: Registry, study_fields: Sequence[str]) -> dict[str, Any]:
    """The study ``data`` (as read from its file) with each of ``overrides`` applied, in order (see the module docstring);
    ``study_fields`` are the fields of a study file. Raises :class:`SpecError` naming every override that cannot be
    applied."""
    study, problems = copy.deepcopy(dict(data)), []
    for text in overrides:
        try:
            study = _override_study_once(study, text, registry, study_fields)
        except UsageError as error:
            problems.append(("", str(error)))
    if problems:
        raise SpecError(COMMAND_LINE, problems)
    return study


def _override_study_once(study: dict[str, Any], text: str, registry: Registry, study_fields: Sequence[str]) -> dict[str, Any]:
    path, values = split_override(text)
    head = path.split(".", 1)[0]
    if head in VARIANT_PARTS:
        raise UsageError(f"{text!r}: name the field itself (train.epochs=5 sets the base; generator.n_blocks=6,9 adds a grid axis)")
    if head in study_fields:
        return set_path(study, path, values if len(values) > 1 else values[0])
    grid = {**study.get("grid", {})}
    grid.pop(path, None)  # the override replaces the axis: as a value of the base, or as the axis's new values
    if len(values) > 1:
        return {**study, "grid": {**grid, path: values}}
    return {**study, "base": set_path(study.get("base") or {}, path, values[0], registry), "grid": grid}


def override_variant(data: Mapping[str, Any], overrides: Sequence[str], registry: Registry) -> dict[str, Any]:
    """The variant spec ``data`` with each of ``overrides`` (``path=value``) set; a list of values is refused: one
    variant has no grid. Raises :class:`SpecError` naming every override that cannot be applied."""
    spec, problems = copy.deepcopy(dict(data)), []
    for text in overrides:
        try:
            path, values = split_override(text)
        except UsageError as error:
            problems.append(("", str(error)))
            continue
        if len(values) > 1:
            problems.append(("", f"{text!r}: one variant has no grid axis; write the values as a list ([a, b]) or run a study"))
            continue
        spec = set_path(spec, path, values[0], registry)
    if problems:
        raise SpecError(COMMAND_LINE, problems)
    return spec
