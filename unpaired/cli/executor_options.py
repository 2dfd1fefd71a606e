"""``unpaired run``'s executor options, from the registry: ``--executor NAME`` and one option per parameter of
any executor (``--jobs``, ``--address``, ...), applied over the study's ``execution`` settings."""

from __future__ import annotations

import argparse
import warnings

from unpaired.cli.plugins import registry as plugin_registry
from unpaired.config.spec import SpecError
from unpaired.config.execution import resolve_execution
from unpaired.config.study import Study
from unpaired.errors import Notice, UsageError
from unpaired.plugin_api.components import Choice
from unpaired.plugin_api.registry import ComponentError

_PREFIX = "execution_"


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--executor`` (the registered executors) and each executor parameter as ``--name-with-dashes``, but for one
    named like an option ``parser`` already has (only the study file sets that one)."""
    registry = plugin_registry()
    executors = registry.components("executor")
    parser.add_argument(
        "--executor", choices=[c.name for c in executors], help=f"where runs train (default: the study's execution.executor, else {_default_name()})"
    )
    owners: dict[str, list[str]] = {}
    helps: dict[str, str] = {}
    for component in executors:
        for field, info in component.params_model.model_fields.items():
            owners.setdefault(field, []).append(component.name)
            helps.setdefault(field, info.description or "")
    for field, names in owners.items():
        try:
            parser.add_argument(
                f"--{field.replace('_', '-')}", dest=_PREFIX + field, metavar=field.upper(), help=f"{helps[field]} ({', '.join(names)} executor)"
            )
        except argparse.ArgumentError:  # a setting named like one of run's own options (--out): the study file sets it
            continue


def _default_name() -> str:
    try:
        return plugin_registry().default("executor")
    except ComponentError:
        return "none registered"


def chosen_execution(args: argparse.Namespace, study: Study) -> Choice:
    """The study's executor and settings with the command line's over them. The study's settings that belong to another
    executor than the chosen one are left aside, with a notice; an option the chosen executor has no parameter for is
    refused, naming the executors that have it."""
    chosen = args.executor or study.execution.name
    given = {key.removeprefix(_PREFIX): value for key, value in vars(args).items() if key.startswith(_PREFIX) and value is not None}
    fields = plugin_registry().get("executor", chosen).params_model.model_fields
    for field in given:
        if field not in fields:
            owners = [c.name for c in plugin_registry().components("executor") if field in c.params_model.model_fields]
            option = "--" + field.replace("_", "-")
            raise UsageError(
                f"{option} is a setting of the {' or '.join(owners)} executor, not of {chosen}: add --executor "
                f"{owners[0]} (or execution: {{executor: {owners[0]}}} in the study)"
            )
    try:
        execution, set_aside = resolve_execution({**study.spec.execution, **given}, plugin_registry(), "the command line", chosen)
    except SpecError as error:
        raise UsageError("; ".join(f"--{where.removeprefix('execution.').replace('_', '-')}: {what}" for where, what in error.problems)) from None
    for line in set_aside:
        warnings.warn(line, Notice, stacklevel=1)
    return execution
