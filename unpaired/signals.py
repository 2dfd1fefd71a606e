"""Stop signals: SIGINT, SIGTERM and a hang-up (SIGHUP: the terminal closed, an SSH connection dropped) never kill
work half-written; a hang-up that the command was told to ignore (``nohup``) stays ignored.

Inside a training loop they are deferred to the next step, which writes a checkpoint and stops;
elsewhere they raise :class:`unpaired.errors.StopRequested`, and a rerun resumes from the last
checkpoint. A worker process hears of them from the process that started it (:func:`listen_for_stop`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import threading
from collections.abc import Iterator
from typing import Any

from unpaired.errors import StopRequested


class _StopState:
    """The stop signal received by this process (if any), whether the current code defers it, and
    (in a worker process) a shared value through which the process that started it asks it to stop."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferring = 0
        self.shared: Any = None  # a multiprocessing.Value("i"): nonzero = the signal to stop for


_stop = _StopState()
_HANG_UP = getattr(signal, "SIGHUP", None)  # none on Windows
_SIGNALS = (signal.SIGINT, signal.SIGTERM, *([_HANG_UP] if _HANG_UP else []))


def _handle(signum: int, frame: Any) -> None:
    if signum == _HANG_UP:
        _leave_the_terminal()
    _stop.received = signum
    if not _stop.deferring:
        raise StopRequested(signum)


def _leave_the_terminal() -> None:
    """After a hang-up every write to the closed terminal fails (EIO), the progress bar's first, which would break the
    checkpoint and the records a stop goes on to write: what this process wrote to a terminal (a character device) goes
    nowhere from now on. Output to a file or a pipe (a log) is left alone."""
    nowhere = os.open(os.devnull, os.O_WRONLY)
    try:
        for descriptor in (1, 2):
            with contextlib.suppress(OSError):
                if stat.S_ISCHR(os.fstat(descriptor).st_mode):
                    os.dup2(nowhere, descriptor)
    finally:
        os.close(nowhere)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block the stop signals stop the work: they raise :class:`StopRequested` at once, or,
    inside :func:`deferred_signals`, only record themselves; a hang-up this process ignores (``nohup``; a worker, which
    hears of it from the process that started it) stays ignored. Only the main thread can install signal handlers;
    elsewhere, and when already installed, nothing changes."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is _handle:
        yield
        return
    caught = [signum for signum in _SIGNALS if signum != _HANG_UP or signal.getsignal(signum) is not signal.SIG_IGN]
    previous = {signum: signal.signal(signum, _handle) for signum in caught}
    _stop.received = None
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Within the block a stop signal only records itself, for a loop that asks :func:`stop_requested` between steps."""
    _stop.deferring += 1
    try:
        with stop_on_signals():
            yield
    finally:
        _stop.deferring -= 1


def stop_requested() -> int | None:
    """The signal this process was asked to stop for, directly or by the process that started it; None when not."""
    if _stop.received is None and _stop.shared is not None and _stop.shared.value:
        _stop.received = _stop.shared.value
    return _stop.received


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask this process's work to stop as if ``signum`` had arrived, from within it (a listener): a training loop
    checkpoints at its next step boundary. :func:`clear_stop` forgets it once that work has ended."""
    _stop.received = signum


def clear_stop() -> None:
    """Forget a stop request (:func:`request_stop`) after the work it stopped has ended, so that the next work runs."""
    _stop.received = None


def raise_if_stopped() -> None:
    """Between the pieces of work that cannot wait for a checkpoint (scoring's batches): raise :class:`StopRequested` when
    this process was asked to stop, also as a worker, whose signals come through :func:`listen_for_stop`. Inside
    :func:`deferred_signals` it does nothing: the training loop there stops at its next step."""
    if not _stop.deferring and (signum := stop_requested()) is not None:
        raise StopRequested(signum)


def listen_for_stop(shared: Any) -> None:
    """In a worker process: stop when ``shared.value`` (a ``multiprocessing.Value("i")``) becomes a signal number,
    and leave the stop signals to the process that started this one (SIGINT and SIGTERM except inside a training
    loop; a hang-up always)."""
    _stop.shared = shared
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
