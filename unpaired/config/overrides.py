"""How overrides apply to a variant spec: deep merges, components given another name, dotted paths."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from unpaired.config.spec import component_slots
from unpaired.plugin_api.registry import ComponentError, Registry


def merge(base: Mapping[str, Any], changes: Mapping[str, Any], registry: Registry | None = None, prefix: str = "") -> dict[str, Any]:
    """Deep merge of ``changes`` into a copy of ``base`` (a variant spec, or the part of one at ``prefix``).

    A component given another name starts afresh, keeping only the parameters *written* for the
    old one that the new component also has (looked up in ``registry``; none without one); every
    other parameter takes the new component's own default: with ``discriminator: {name: patchgan,
    ndf: 32}`` in the base, ``{name: pooled}`` keeps ``ndf: 32``, while ``image_pool: {name: none}``
    drops the history pool's ``size``.
    """
    out = copy.deepcopy(dict(base))
    for key, value in changes.items():
        old, path = out.get(key), f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if value.get("name", old.get("name")) != old.get("name"):
                old = {"name": value["name"], **_shared_params(path, old, value["name"], registry)}
            out[key] = merge(old, value, registry, f"{path}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _shared_params(path: str, old: Mapping[str, Any], new_name: str, registry: Registry | None) -> dict[str, Any]:
    slot = component_slots().get(path)
    if registry is None or slot is None:
        return {}
    try:
        accepted = registry.get(slot.kind, new_name).params_model.model_fields
    except ComponentError:
        return {}
    return {k: copy.deepcopy(v) for k, v in old.items() if k != "name" and k in accepted}


def set_path(spec: dict[str, Any], path: str, value: Any, registry: Registry | None = None) -> dict[str, Any]:
    """A copy of ``spec`` with the dotted ``path`` set to ``value`` (merged like a named override). With a ``registry``,
    a parameter of a component the spec leaves out (``method.lambda_A``) sets it on that slot's default component."""
    if registry is not None:
        spec = _with_default_component_of(spec, path, registry)
    *parents, last = path.split(".")
    change: dict[str, Any] = {last: value}
    for part in reversed(parents):
        change = {part: change}
    return merge(spec, change, registry)


def _with_default_component_of(spec: dict[str, Any], path: str, registry: Registry) -> dict[str, Any]:
    """``spec`` with the slot that ``path`` sets a parameter of naming its default component, when the spec leaves it out."""
    found = next(((at, slot) for at, slot in component_slots().items() if path.startswith(f"{at}.") and path != f"{at}.name"), None)
    if found is None or found[1].fallback is not None or _get_path(spec, found[0]) is not None:
        return spec
    at, slot = found
    try:
        return set_path(spec, f"{at}.name", registry.default(slot.kind))
    except ComponentError:  # no default: the missing name is reported when the variant resolves
        return spec


def _get_path(spec: Mapping[str, Any], path: str) -> Any:
    value: Any = spec
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def with_default_components(spec: Mapping[str, Any], registry: Registry) -> dict[str, Any]:
    """``spec`` with every absent component field (but those that fall back to another) naming its kind's
    default component, so overrides and grid axes of a component the spec leaves out
    (``generator.n_blocks`` ...) merge into the default choice."""
    filled = copy.deepcopy(dict(spec))
    for path, slot in component_slots().items():
        *parents, field = path.split(".")
        holder = filled
        for part in parents:  # the spec was validated: what holds a component is a mapping
            holder = holder.setdefault(part, {})
        if slot.fallback is None and holder.get(field) is None:
            try:
                holder[field] = {"name": registry.default(slot.kind)}
            except ComponentError:
                pass  # reported when the variant resolves
    return filled
