"""The shape of the code: the framework knows no concrete component, one module owns each concept, nothing sprawls."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path


from conftest import REPO
from unpaired.plugin_api import hookspecs
from unpaired.plugin_api.components import KINDS, REGISTER_HOOKS
from unpaired.plugin_api.registry import Registry

PACKAGE = REPO / "unpaired"
MODULES = sorted(PACKAGE.rglob("*.py"))
RUN_FOLDER_FILES = ("spec.json", "history.json", "history.csv", "result.json", "error.txt", "mlflow_run.json", "showcase.pt")
RUN_FOLDER_DIRS = ("checkpoints", "generators")


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (of the module, classes, functions, or attributes)."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for statement in body:
                if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str):
                    found.add(id(statement.value))
    return found


def string_literals(path: Path, keys: bool = True) -> list[str]:
    """Every string constant of a module that is not a docstring (f-string parts included); without
    ``keys``, also not the keys of dicts and subscripts (field names such as ``"folder"``)."""
    tree = parsed(path)
    skip = docstrings(tree)
    if not keys:
        skip |= {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys}
        skip |= {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


def test_the_framework_imports_no_plugin_and_names_no_builtin_component(site):
    builtins = {c.name for c in Registry.from_entry_points().components() if c.distribution == "unpaired"} - {
        "none",
        "fid",
    }  # also words (fid: a command)
    assert {"cyclegan", "kid", "resnet", "patchgan", "instance", "lsgan", "history", "folder", "synthetic", "inception"} <= builtins
    for path in MODULES:
        tree = parsed(path)
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith("unpaired_plugins")], path
        literals = string_literals(path, keys=False)
        named = sorted(builtins.intersection(literals))
        assert not named, f"{path.relative_to(REPO)} spells the built-in component name(s) {named}"
        columns = sorted({word for text in literals for word in re.findall(r"\b(?:fid|kid)_\w*", text)})
        assert not columns, f"{path.relative_to(REPO)} names the built-in metrics' columns {columns}: ask the metrics (labels, caveats)"


LAYERS = [  # CONTRIBUTING.md's "How the code is organised", top to bottom: a module imports only from its layer or those above
    ["unpaired.errors"],
    ["unpaired.signals", "unpaired.devices"],
    ["unpaired.plugin_api"],
    ["unpaired.config"],
    ["unpaired.storage"],
    ["unpaired.evaluation"],
    ["unpaired.training"],
    ["unpaired.results"],
    ["unpaired.tracking"],
    ["unpaired.execution"],
    ["unpaired.reporting"],
    ["unpaired.tools", "unpaired.testing", "unpaired.cli", "unpaired.__main__"],
]


def layer_of(module: str) -> int:
    """The layer of a module: the one whose longest prefix names it (``unpaired`` itself is the top)."""
    matches = [
        (len(prefix), index) for index, prefixes in enumerate(LAYERS) for prefix in prefixes if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1] if matches else 0


def runtime_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """``(module, line)`` of each import of an ``unpaired`` module that runs (not those only for type checking)."""
    typing_only = {
        id(node) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)
    }
    return [
        (node.module, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unpaired") and id(node) not in typing_only
    ]


def test_no_module_imports_from_a_layer_below_its_own():
    wrong = []
    for path in MODULES:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        wrong += [
            f"{path.relative_to(REPO)}:{line} ({module}, layer {layer_of(module)}) imports {imported} (layer {layer_of(imported)})"
            for imported, line in runtime_imports(parsed(path))
            if layer_of(imported) > layer_of(module)
        ]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle_even_for_type_checking():
    """The framework's modules import each other without a circle, counting imports for type checking and imports by
    ``importlib`` too: the plugin contract (``plugin_api``) defines every type its hooks and executors receive, so it
    names nothing of the framework's, not even for type checking."""
    imports: dict[str, set[str]] = {}
    for path in MODULES:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        tree = parsed(path)
        found = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unpaired.")}
        found |= {
            call.args[0].value
            for call in ast.walk(tree)
            if isinstance(call, ast.Call)
            and ast.unparse(call.func).endswith("import_module")
            and call.args
            and isinstance(call.args[0], ast.Constant)
            and str(call.args[0].value).startswith("unpaired.")
        }
        dynamic = [ast.unparse(c) for c in ast.walk(tree) if isinstance(c, ast.Call) and ast.unparse(c.func).endswith("import_module")]
        assert module != "unpaired.plugin_api" or not dynamic, f"the plugin contract imports by name: {dynamic}"
        imports[module] = found

    def circle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for imported in imports.get(module, ()):
                if imported == start:
                    return path + [start]
                if imported not in seen:
                    seen.add(imported)
                    stack.append((imported, path + [imported]))
        return None

    circles = [" -> ".join(circle) for module in imports if (circle := circle_from(module))]
    assert not circles, "\n".join(circles)


def test_only_the_run_folder_module_spells_run_folder_file_names():
    owner = PACKAGE / "storage" / "run_folder.py"
    for path in MODULES:
        if path != owner:
            texts = string_literals(path)
            spelled = [name for text in texts for name in RUN_FOLDER_FILES if name in text]
            spelled += [name for name in RUN_FOLDER_DIRS if name in texts]
            assert not spelled, f"{path.relative_to(REPO)} spells {spelled}: ask RunFolder instead"


def test_every_component_kind_has_its_documented_register_hook():
    declared = {name for name in dir(hookspecs) if name.startswith("unpaired_register_")}
    assert declared == set(REGISTER_HOOKS.values())
    assert KINDS == tuple(REGISTER_HOOKS)


def test_complexity_is_bounded_by_the_linter():
    """What a function does is bounded by its paths (ruff's C901, checked by CI's ``ruff check``), not its line count:
    line caps made code pack assignments and inline names to fit."""
    lint = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert "C901" in lint["select"] and lint["mccabe"]["max-complexity"] <= 10


def test_every_package_is_installed():
    """A subpackage missing from pyproject works in an editable install and breaks ``pip install .``."""
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= declared


def test_lifecycle_hooks_are_typed_with_what_the_plugin_api_exports():
    """A listener used to get ``Any`` and had to introspect internal classes to read the study name."""
    import typing

    import unpaired.plugin_api as api

    names = {name: getattr(api, name) for name in ("RunInfo", "RunResult", "StudyInfo", "StudySummary")}
    hooks = [getattr(hookspecs, name) for name in dir(hookspecs) if name.startswith("unpaired_on_") or name == "unpaired_study_listeners"]
    typed = {param: hint for hook in hooks for param, hint in typing.get_type_hints(hook, {**vars(hookspecs), **names}).items()}
    assert typed["run"] is api.RunInfo and typed["result"] is api.RunResult
    assert typed["study"] is api.StudyInfo and typed["summary"] is api.StudySummary
    assert typing.Any not in typed.values()
