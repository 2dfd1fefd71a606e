"""Where a study's runs train: its ``execution`` settings checked by the chosen executor's own model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unpaired.config.spec import SpecError
from unpaired.plugin_api.components import Choice
from unpaired.plugin_api.registry import ComponentError, InvalidParamsError, Registry


def resolve_execution(
    settings: Mapping[str, Any], registry: Registry, source: str = "<study>", executor: str | None = None
) -> tuple[Choice, list[str]]:
    """The executor ``executor`` names (default: ``settings["executor"]``, else the one registered as default), with the
    other keys of ``settings`` validated as its parameters; and a line for each key it sets aside because it is another
    executor's setting (``cpus_per_run`` of a study trained locally: it applies when that executor trains the study).
    A key that no executor has, or a value that does not fit, is a :class:`SpecError` at ``execution.*``."""
    config = dict(settings)
    named = config.pop("executor", None)
    try:
        name = executor or named or registry.default("executor")
        component = registry.get("executor", name)
    except ComponentError as error:
        raise SpecError(source, [("execution.executor", str(error))]) from None
    others = {field: c.name for c in registry.components("executor") if c is not component for field in c.params_model.model_fields}
    ignored = [key for key in config if key not in component.params_model.model_fields and key in others]
    try:
        choice = registry.resolve("executor", {"name": name, **{k: v for k, v in config.items() if k not in ignored}}, where="execution")
    except InvalidParamsError as error:
        raise SpecError(source, error.errors) from None
    return choice, [
        f"execution.{key} is a setting of the {others[key]} executor; {component.name}, which trains the study here, leaves it aside"
        for key in ignored
    ]
