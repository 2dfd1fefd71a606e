"""Which device a run trains on, what it is called, and the CPU thread count around a block."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator

import torch

from unpaired.errors import UnpairedError


class DeviceError(UnpairedError):
    """The device a spec names is not there."""


def pick_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU, else Apple MPS, else the CPU; otherwise the named device (checked)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"train.device is {name!r} but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"train.device is {name!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("train.device is 'mps' but MPS is not available; use 'auto' or 'cpu'")
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
