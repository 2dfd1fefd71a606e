"""The ``unpaired`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from unpaired import __version__
from unpaired.components import Component
from unpaired.registry import default_registry


def _parameters_json(component: Component) -> dict[str, dict[str, object]]:
    return {
        field: {
            "default": default,
            "type": getattr(info.annotation, "__name__", str(info.annotation)),
            "description": info.description or "",
        }
        for (field, info), default in zip(component.params_model.model_fields.items(), component.parameters().values())
    }


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every registered component with its origin, parameters and description."""
    registry = default_registry()
    components = registry.components()
    counts: dict[tuple[str, str], int] = {}
    for c in components:
        counts[(c.kind, c.name)] = counts.get((c.kind, c.name), 0) + 1
    if args.json:
        rows = [
            {
                "kind": c.kind,
                "name": c.name,
                "distribution": c.distribution,
                "version": c.version,
                "description": c.description,
                "parameters": _parameters_json(c),
                "conflict": counts[(c.kind, c.name)] > 1,
            }
            for c in components
        ]
        print(json.dumps({"components": rows, "problems": registry.problems}, indent=2, default=str))
    else:
        kind = None
        for c in components:
            if c.kind != kind:
                kind = c.kind
                print(f"{kind}:")
            conflict = "  CONFLICT: registered by more than one plugin" if counts[(c.kind, c.name)] > 1 else ""
            print(f"  {c.name}  ({c.distribution} {c.version})  {c.description}{conflict}")
            params = "  ".join(f"{k}={v!r}" for k, v in c.parameters().items())
            print(f"      {params or '(no parameters)'}")
    for problem in registry.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``unpaired`` command and its subcommands."""
    parser = argparse.ArgumentParser(prog="unpaired", description="Ablation studies for unpaired image-to-image translation.")
    parser.add_argument("--version", action="version", version=f"unpaired {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list the components that installed plugins provide")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(handler=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unpaired`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
