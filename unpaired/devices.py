"""Which device a run trains on, what it is called, and the CPU thread count and GPU algorithms around a block."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator

import torch

from unpaired.errors import UnpairedError


class DeviceError(UnpairedError):
    """The device a spec names is not there."""


def pick_device(name: str, where: str = "train.device") -> torch.device:
    """``auto``: the first CUDA GPU, else Apple MPS, else the CPU; otherwise the named device, checked (an error names
    ``where`` it was asked for: the spec's field or a command's option)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{where} is {name!r} but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{where} is {name!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{where} is 'mps' but MPS is not available; use 'auto' or 'cpu'")
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


DETERMINISTIC_CUBLAS_WORKSPACE = ":4096:8"
"""What cuBLAS needs for deterministic results (PyTorch's reproducibility notes); read once, when cuBLAS starts."""


@contextlib.contextmanager
def gpu_algorithms(deterministic: bool) -> Iterator[None]:
    """Inside the block, GPU kernels are chosen for speed (cuDNN autotunes each convolution's algorithm) or, when
    ``deterministic``, only deterministic ones are used, so that a rerun or a resume gives the same numbers bit for
    bit. An operation with no deterministic GPU kernel (PyTorch names it in a warning) still runs. Everything is as
    before afterwards. cuBLAS's deterministic workspace is asked for whatever the choice, as cuBLAS reads it only when
    it starts, which the first block of a process usually precedes. CPU kernels are deterministic for a given thread
    count either way."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", DETERMINISTIC_CUBLAS_WORKSPACE)
    cudnn = torch.backends.cudnn
    saved = cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn.benchmark, cudnn.deterministic = not deterministic, deterministic
    _deterministic_algorithms(deterministic, warn_only=True)
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved[:2]
        _deterministic_algorithms(saved[2], warn_only=saved[3])


def _deterministic_algorithms(enabled: bool, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms``, called only to change the setting: each call imports torch's compiler,
    almost 2 s that a scoring command would pay for leaving it off."""
    now = torch.are_deterministic_algorithms_enabled()
    if now != enabled or (enabled and torch.is_deterministic_algorithms_warn_only_enabled() != warn_only):
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
