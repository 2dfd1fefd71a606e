"""The ``unpaired`` console script (and ``python -m unpaired``): the command line, with a Ctrl-C during its start answered
like one during its work.

This module imports nothing heavy itself, so the seconds a command takes to import torch and the plugins (in
:func:`unpaired.cli.main`, before it runs the command) are covered: a Ctrl-C there exits 130 with one line instead of a
traceback. Once the command runs, :func:`unpaired.cli.main` owns stop signals.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def main() -> int:
    """Run the ``unpaired`` command on ``sys.argv``; returns the exit code."""
    received: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        from unpaired.cli import main as command_line

        if received:  # a library imported on the way caught the KeyboardInterrupt (a bare ``except:``) and went on
            raise KeyboardInterrupt
        return command_line()
    except KeyboardInterrupt:  # before or after the command's own signal handling (imports, parsing)
        print("interrupted: Ctrl-C while the command was starting or ending, outside its work: nothing is half-done", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
