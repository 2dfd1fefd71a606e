"""The one base of every error `unpaired` expects and explains.

An :class:`UnpairedError` carries a message that says what went wrong and what to do, and
the exit code the command line ends with. Anything else that escapes is a bug (in
`unpaired` or in a plugin): the command line then shows its traceback.
"""

from __future__ import annotations

import difflib
import sys
import warnings
from collections.abc import Iterator, Sequence
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


class UnpairedError(Exception):
    """A problem the user can fix; the message names the file, field or value and what to do."""

    exit_code: int = 1


class UsageError(UnpairedError):
    """A request that what exists cannot meet: a variant or seed not in the study, a study with no finished runs, ..."""


class InputError(UnpairedError):
    """A file or folder given to a command cannot be used: missing, of the wrong kind, unreadable or corrupt."""

    exit_code = 2


class Interrupted(UnpairedError):
    """SIGINT or SIGTERM stopped the work after saving what it needs to resume; running the same command again resumes."""

    exit_code = 130


class Notice(UserWarning):
    """Something the user should know that did not stop the work (a corrupt file set aside, a lease taken over):
    the command line prints it as one ``warning:`` line, not as a Python warning with its source line.

    This is how the library tells the user anything outside a command's own output: ``warnings.warn(text, Notice)``
    (or :class:`Note`), in any process. Progress lines go to the ``announce`` callback a study runs with, what a study
    adds up to into its summary (``summary.notes``); only the command line prints."""


class Note(Notice):
    """A notice that is information, not a problem: printed as one ``note:`` line."""


def print_notices_plainly() -> None:
    """Show every :class:`Notice` of this process as ``warning: <message>`` (``note:`` for a :class:`Note`) on stderr, each
    time it is warned; other warnings as Python shows them."""
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
        if issubclass(category, Notice):
            print(f"{'note' if issubclass(category, Note) else 'warning'}: {message}", file=sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, file, line)

    if getattr(shown, "__name__", "") != "show":
        warnings.showwarning = show
        warnings.simplefilter("always", Notice)


CPU_OUT_OF_MEMORY = "DefaultCPUAllocator: can't allocate memory"
"""How torch says that the host had no memory for a tensor (a RuntimeError; the GPUs' is an OutOfMemoryError)."""


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is torch finding no memory for a tensor, on a GPU or on the host (torch is not imported for it:
    where it is not imported yet, the error is not torch's)."""
    torch = sys.modules.get("torch")
    return (torch is not None and isinstance(error, torch.OutOfMemoryError)) or (isinstance(error, RuntimeError) and CPU_OUT_OF_MEMORY in str(error))


def listed(items: Sequence[str], separator: str = ", ", shown: int = 5) -> str:
    """The first ``shown`` of ``items`` joined for a message, then how many more there are: a thousand unreadable
    images make one readable line (``a, b, c, d, e and 995 more``)."""
    more = len(items) - shown
    return separator.join(items[:shown]) + (f" and {more} more" if more > 0 else "")


class StopRequested(BaseException):
    """SIGINT or SIGTERM arrived where the work cannot wait for a checkpoint: it stops at once.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` mistakes it for a failure.
    """

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by signal {signum}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a command a signal stopped (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


def _fields_along(model: type[BaseModel], loc: tuple[Any, ...]) -> Iterator[FieldInfo]:
    """The fields ``loc`` passes through, from ``model`` down its nested models, as far as it names fields."""
    current: type[BaseModel] | None = model
    for part in loc:
        field = current.model_fields.get(part) if current is not None and isinstance(part, str) else None
        if field is None:
            return
        yield field
        annotation = field.annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found at ``loc`` inside ``model`` (nested models only; [] elsewhere)."""
    passed = list(_fields_along(model, loc))
    found = passed[-1].annotation if passed else model
    if len(passed) < len(loc) or not (isinstance(found, type) and issubclass(found, BaseModel)):
        return []
    return list(found.model_fields)


def pydantic_problems(error: ValidationError, model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """Turn ``model``'s validation error into ``(dotted_path, message)`` pairs; messages quote the bad value,
    and an unknown key gets the closest known one and the list of known ones. A value that fits no type of a union
    (``int | Literal["auto"]``) is one problem of its field, saying each type it could have been."""
    found: dict[tuple[str, int], list[str]] = {}
    got: dict[tuple[str, int], Any] = {}
    for number, item in enumerate(error.errors()):
        loc, of_union = _without_union_tag(model, item["loc"])
        path = ".".join([part for part in [prefix] if part] + [str(part) for part in loc])
        key = (path, -1 if of_union else number)  # a union's branches share one problem; any other stands alone
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            message = f"unknown key; did you mean {close[0]!r}?" if close else "unknown key."
            message += f" Known: {', '.join(known)}." if known else ""
        elif item["type"] == "value_error":  # a validator's own message, which says what was wrong with what
            message = message.removeprefix("Value error, ")
            if not isinstance(item["input"], dict):  # a whole section's validator: its message names the values
                got[key] = item["input"]
        elif item["type"] != "missing":
            got[key] = item["input"]
        found.setdefault(key, []).append(message)
    return [(key[0], _either(messages) + (f" (got {got[key]!r})" if key in got else "")) for key, messages in found.items()]


def _without_union_tag(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], bool]:
    """``loc`` without the branch pydantic names after a field whose type is a union (``runs_per_gpu.constrained-int``:
    the user wrote the field, not the branch), and whether it had one."""
    for index, field in enumerate(_fields_along(model, loc[:-1])):
        choices = [choice for choice in get_args(field.annotation) if choice is not type(None)]
        if get_origin(field.annotation) in (Union, UnionType) and len(choices) > 1:
            return (*loc[: index + 1], *loc[index + 2 :]), True
    return loc, False


def _either(messages: list[str]) -> str:
    """``Input should be greater than or equal to 1; or 'auto'``: a union's messages as one."""
    return "; or ".join([messages[0], *(message.removeprefix("Input should be ") for message in messages[1:])])
