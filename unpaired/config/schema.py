"""The JSON Schema of study files, with every registered component and its parameters, for editors."""

from __future__ import annotations

from typing import Any

from unpaired.config.spec import VariantSpec, component_slots
from unpaired.config.study import StudySpec
from unpaired.plugin_api.components import ComponentKind
from unpaired.plugin_api.registry import Registry


def _component_options(
    registry: Registry, kind: ComponentKind, definitions: dict[str, Any], require: bool, key: str = "name"
) -> list[dict[str, Any]]:
    """One object schema per component of ``kind``: ``key`` (the name) and its parameters."""
    options = []
    for component in registry.components(kind):
        params = component.params_model.model_json_schema()
        definitions.update(params.pop("$defs", {}))
        options.append(
            {
                "type": "object",
                "description": component.description,
                "properties": {key: {"const": component.name}, **params.get("properties", {})},
                "required": [key, *params.get("required", [])] if require else [],
                "additionalProperties": False,
            }
        )
    return options


def study_json_schema(registry: Registry) -> dict[str, Any]:
    """JSON Schema of a study file, with every registered component and its parameters, for editors."""
    schema = StudySpec.model_json_schema()
    definitions: dict[str, Any] = schema.pop("$defs", {})  # the study's own (TrackingConfig), then the variant's and components'
    for title, require in (("Variant", True), ("VariantOverride", False)):
        variant = VariantSpec.model_json_schema()
        definitions.update(variant.pop("$defs", {}))
        for field, slot in component_slots().items():
            if "." in field:
                continue
            options = _component_options(registry, slot.kind, definitions, require)
            if field != "data":  # left out or null: the default (or the field it falls back to)
                options.append({"type": "null"})
            variant["properties"][field] = {"description": variant["properties"][field].get("description", ""), "anyOf": options}
        if not require:
            variant.pop("required", None)
        variant["title"] = title
        definitions[title] = variant
    extractor = definitions["EvalConfig"]["properties"]["feature_extractor"]
    extractor["anyOf"] = [
        *_component_options(registry, component_slots()["eval.feature_extractor"].kind, definitions, require=False),
        {"type": "null"},
    ]
    metrics = definitions["EvalConfig"]["properties"]["metrics"]["anyOf"][0]["items"]  # each a name or {name, **params}
    metric_options = _component_options(registry, "metric", definitions, require=True)
    metrics["anyOf"] = [{"enum": [option["properties"]["name"]["const"] for option in metric_options]}, *metric_options]
    definitions.pop("ComponentConfig", None)
    schema["$defs"] = definitions
    schema["properties"]["base"] = {"$ref": "#/$defs/Variant", "description": schema["properties"]["base"]["description"]}
    schema["properties"]["variants"]["additionalProperties"] = {"$ref": "#/$defs/VariantOverride"}
    schema["properties"]["execution"] = {
        "description": schema["properties"]["execution"]["description"],
        "anyOf": _component_options(registry, "executor", definitions, require=False, key="executor"),
    }
    return schema
