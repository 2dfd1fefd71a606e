"""What a training process needs besides the algorithm: the device, seeds and RNG states, stop signals.

Stop signals (SIGINT, SIGTERM) never kill a run half-written: inside a training loop they are
deferred to the next step, which writes a checkpoint and stops; elsewhere they raise
:class:`unpaired.errors.StopRequested`, and a rerun resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import platform
import random
import signal
import threading
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import torch

from unpaired.errors import Interrupted, StopRequested, UnpairedError


class TrainingError(UnpairedError):
    """Training of a run stopped; the message says why and what to do."""


class TrainingInterrupted(Interrupted):
    """SIGINT or SIGTERM arrived; a checkpoint was written and a rerun resumes from it."""


def pick_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU, else Apple MPS, else the CPU; otherwise the named device (checked)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device is {name!r} but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainingError(f"train.device is {name!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError("train.device is 'mps' but MPS is not available; use 'auto' or 'cpu'")
    return device


def describe_device(device: torch.device) -> str:
    """What a run trained on, for people: ``cuda (NVIDIA H200)``, ``cpu (x86_64, 2 threads)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({platform.machine() or 'unknown'}, {threads} thread{'s' if threads != 1 else ''})"
    return device.type


@contextlib.contextmanager
def thread_count_kept() -> Iterator[None]:
    """Whatever the block sets torch's CPU thread count to (a resume uses its run's), it is as before afterwards."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The state of every global RNG: Python, NumPy, torch CPU and all CUDA devices."""
    numpy_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": numpy_state[2],
                  "has_gauss": numpy_state[3], "cached_gaussian": numpy_state[4]},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` returned."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopState:
    """The stop signal received by this process (if any), whether the current code defers it, and
    (in a worker process) a shared value through which the process that started it asks it to stop."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferring = 0
        self.shared: Any = None  # a multiprocessing.Value("i"): nonzero = the signal to stop for


_stop = _StopState()
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _handle(signum: int, frame: Any) -> None:
    _stop.received = signum
    if not _stop.deferring:
        raise StopRequested(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM stop the work: they raise :class:`StopRequested` at once, or,
    inside :func:`deferred_signals`, only record themselves. Only the main thread can install signal
    handlers; elsewhere, and when already installed, nothing changes."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is _handle:
        yield
        return
    previous = {signum: signal.signal(signum, _handle) for signum in _SIGNALS}
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


def listen_for_stop(shared: Any) -> None:
    """In a worker process: stop when ``shared.value`` (a ``multiprocessing.Value("i")``) becomes a signal number,
    and leave SIGINT/SIGTERM to the process that started this one, except inside a training loop."""
    _stop.shared = shared
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
