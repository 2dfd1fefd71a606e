"""Reading spec files: YAML and JSON alike, duplicate keys refused, errors with line and column; files too big, too deep
or whose aliases expand too far refused before anything walks them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from unpaired.config.spec import SpecError


class _DuplicateKeyError(ValueError):
    pass


class _StrictYamlLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate mapping keys instead of keeping the last one. A merge key (``<<: *base``)
    is no duplicate, nor are the keys it merges that the mapping sets again: that is what merging is for."""

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        seen = set()
        for key_node, _ in node.value:  # as written: a merge is only done when the mapping is constructed
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return node


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise _DuplicateKeyError(f"duplicate key {duplicates[0]!r}")
    return dict(pairs)


MAX_DOCUMENT_BYTES = 256 * 1024
"""The largest spec file read: anything bigger is not a study (and parsing it could take minutes)."""
MAX_DOCUMENT_VALUES = 1_000_000
"""The most values a spec may hold with its YAML aliases expanded: a few hundred bytes of aliases of aliases can stand
for billions of values ("billion laughs"), which checking would take hours and all the memory to walk."""
MAX_DOCUMENT_DEPTH = 32
"""The deepest nesting of mappings and lists in a spec (a study's is about 6): deeper, checking it would exhaust
Python's recursion."""
TOO_DEEP = f"nested more than {MAX_DOCUMENT_DEPTH} levels deep: a spec is a few levels of keys and lists"


def read_document(path: str | Path) -> Any:
    """Parse a YAML (.yaml/.yml) or JSON (.json) file; syntax errors and duplicate keys name the line and column. A file
    too big, nested too deeply, or whose YAML aliases stand for too many values (or for themselves) is refused."""
    path = Path(path)
    try:
        if (size := path.stat().st_size) > MAX_DOCUMENT_BYTES:
            raise SpecError(
                str(path),
                [("", f"is {size // 1024} KiB; a spec is at most {MAX_DOCUMENT_BYTES // 1024} KiB (a study is a few KiB: name the file you meant)")],
            )
        text = path.read_text()
    except OSError as error:
        raise SpecError(str(path), [("", f"cannot read the file: {error.strerror or error}")]) from None
    except UnicodeDecodeError:
        raise SpecError(str(path), [("", "not a text file: a spec is YAML or JSON (UTF-8)")]) from None
    try:
        document = _parse(path, text)
    except _TooDeep:
        raise SpecError(str(path), [("", TOO_DEEP)]) from None
    if problem := shape_problem(document):
        raise SpecError(str(path), [("", problem)])
    return document


def shape_problem(document: Any) -> str | None:
    """Why ``document`` (as YAML or JSON reads it) cannot be checked, or None: nested too deeply, or YAML aliases that
    stand for too many values or for themselves (checking walks each alias wherever it appears)."""
    try:
        values = _expanded_values(document)
    except _TooDeep:
        return TOO_DEEP
    except _HoldsItself:
        return "invalid YAML: an alias (*name) stands for a value that holds that alias itself"
    if values > MAX_DOCUMENT_VALUES:
        return f"its YAML aliases (*name) stand for over {MAX_DOCUMENT_VALUES:,} values; a spec holds a few hundred"
    return None


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text, object_pairs_hook=_refuse_duplicates)
        except json.JSONDecodeError as error:
            raise SpecError(f"{path}:{error.lineno}:{error.colno}", [("", f"invalid JSON: {error.msg}")]) from None
        except _DuplicateKeyError as error:
            raise SpecError(str(path), [("", f"invalid JSON: {error}")]) from None
        except RecursionError:
            raise _TooDeep from None
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(where, [("", f"invalid YAML: {error.problem or error}")]) from None
    except yaml.YAMLError as error:
        raise SpecError(str(path), [("", f"invalid YAML: {error}")]) from None
    except RecursionError:
        raise _TooDeep from None


class _TooDeep(ValueError):
    pass


class _HoldsItself(ValueError):
    pass


def _expanded_values(document: Any) -> int:
    """How many values ``document`` holds, a part that YAML aliases share counted wherever it appears (each shared part
    is walked once); raises :class:`_TooDeep` past :data:`MAX_DOCUMENT_DEPTH` and :class:`_HoldsItself` for a part that
    holds itself."""
    counted: dict[int, int | None] = {}  # id of a list or mapping -> its count; None while it is being counted

    def count(value: Any, depth: int) -> int:
        if not isinstance(value, (list, dict)):
            return 1
        if depth > MAX_DOCUMENT_DEPTH:
            raise _TooDeep
        if id(value) in counted:
            if (known := counted[id(value)]) is None:
                raise _HoldsItself
            return known
        counted[id(value)] = None
        parts = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        counted[id(value)] = total = 1 + sum(count(part, depth + 1) for part in parts)
        return total

    return count(document, 1)
