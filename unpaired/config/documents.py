"""Reading spec files: YAML and JSON alike, duplicate keys refused, errors with line and column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from unpaired.config.spec import SpecError


class _DuplicateKeyError(ValueError):
    pass


class _StrictYamlLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate mapping keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise _DuplicateKeyError(f"duplicate key {duplicates[0]!r}")
    return dict(pairs)


MAX_DOCUMENT_BYTES = 256 * 1024
"""The largest spec file read: anything bigger is not a study (and parsing it could take minutes)."""


def read_document(path: str | Path) -> Any:
    """Parse a YAML (.yaml/.yml) or JSON (.json) file; syntax errors and duplicate keys name the line and column."""
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
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text, object_pairs_hook=_refuse_duplicates)
        except json.JSONDecodeError as error:
            raise SpecError(f"{path}:{error.lineno}:{error.colno}", [("", f"invalid JSON: {error.msg}")]) from None
        except _DuplicateKeyError as error:
            raise SpecError(str(path), [("", f"invalid JSON: {error}")]) from None
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(where, [("", f"invalid YAML: {error.problem or error}")]) from None
    except yaml.YAMLError as error:
        raise SpecError(str(path), [("", f"invalid YAML: {error}")]) from None
