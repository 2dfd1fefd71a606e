"""The one base of every error `unpaired` expects and explains.

An :class:`UnpairedError` carries a message that says what went wrong and what to do, and
the exit code the command line ends with. Anything else that escapes is a bug (in
`unpaired` or in a plugin): the command line then shows its traceback.
"""

from __future__ import annotations


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
