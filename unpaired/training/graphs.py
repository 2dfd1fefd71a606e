"""A method's training step, run as it is or captured once as a CUDA graph and replayed.

On a GPU a step of small convolutional networks is bound by the host launching its thousands of kernels one by one.
Captured, the whole step (every forward and backward pass, the optimiser steps, the pools' decisions) is one launch.
What a capture asks of the method is its contract (:meth:`Method.capture_problem`); what it asks of the loop is here:
static input buffers that each batch is copied into, a few eager warm-up steps before the capture (cuDNN's autotuning
and the optimisers' and pools' lazy state must not happen inside it), a new capture when the method's capture key
changes, and an eager step for a batch of another shape (an epoch's smaller last batch).
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from typing import Literal

import torch
from torch import Tensor

from unpaired.errors import Note
from unpaired.plugin_api.components import TrainingProgress
from unpaired.plugin_api.methods import Method, Runtime
from unpaired.training.runtime import TrainingError

WARMUP_STEPS = 3
"""Eager steps before a capture (PyTorch's CUDA graph notes warm up with three)."""

GraphSetting = Literal["auto", "on", "off"]


def runtime_problem(runtime: Runtime, setting: GraphSetting) -> str | None:
    """Why no step can be captured on ``runtime`` under ``train.cuda_graphs: setting``, whatever its method (the
    device, the precision, compilation, torch)."""
    if runtime.device.type != "cuda":
        return f"CUDA graphs need a CUDA device, and this run trains on {runtime.device.type}"
    if runtime.precision == "fp16":
        return "fp16's grad scaler decides on the host whether to step (use bf16)"
    if runtime.compile and setting == "auto":  # the compiled networks' kernels, captured with the rest of the step
        return "train.compile is on, and a compiled step captured as a graph is not yet measured on a GPU (train.cuda_graphs: on captures it)"
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):  # image pools draw from their own generators
        return f"torch {torch.__version__} cannot register a part's own random generator with a graph (2.5 can)"
    return None


def graph_problem(method: Method, runtime: Runtime, setting: GraphSetting) -> str | None:
    """Why this run's step cannot be captured as a CUDA graph under ``train.cuda_graphs: setting``, or None when it can."""
    if (problem := runtime_problem(runtime, setting)) is not None:
        return problem
    if (problem := method.capture_problem()) is not None:
        return f"{type(method).__name__}: {problem}"
    optimizer = next((o for o in method.optimizers() if not all(isinstance(g["lr"], Tensor) for g in o.param_groups)), None)
    if optimizer is not None:
        return f"its optimiser {type(optimizer).__name__} keeps its learning rate on the host (build it with Runtime.adam)"
    return None


class StepRunner:
    """Runs the method's ``train_step`` on each batch: as it is, or, with ``capture``, over static input buffers, the
    first :data:`WARMUP_STEPS` steps eagerly and then as a CUDA graph captured once and replayed (on a CPU, where
    there are no graphs, the same steps over the same buffers run eagerly: what the CPU tests check).

    A captured step returns the same output tensors at every replay, overwritten by the next: read them before then.
    """

    def __init__(self, method: Method, runtime: Runtime, capture: bool):
        self.method = method
        self.runtime = runtime
        self.capture = capture
        self.inputs: tuple[Tensor, Tensor] | None = None
        self.warm_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: Mapping[str, Tensor] = {}
        self.key: Hashable = None
        self.stream = torch.cuda.Stream(runtime.device) if capture and runtime.device.type == "cuda" else None

    @classmethod
    def for_run(cls, method: Method, runtime: Runtime, setting: GraphSetting) -> StepRunner:
        """The runner ``train.cuda_graphs`` asks for: ``auto`` captures when the run allows it (and says why not on a
        GPU), ``on`` must capture (an error says why it cannot), ``off`` never does."""
        problem = graph_problem(method, runtime, setting) if setting != "off" else "off"
        if problem not in (None, "off"):
            if setting == "on":
                raise TrainingError(f"train.cuda_graphs is on, but {problem}; set train.cuda_graphs: auto to train without graphs")
            if runtime.device.type == "cuda":
                warnings.warn(f"training eagerly, without CUDA graphs: {problem}", Note, stacklevel=2)
        return cls(method, runtime, capture=problem is None)

    @property
    def captured(self) -> bool:
        """Whether the steps now replay a captured graph."""
        return self.graph is not None

    def __call__(self, real_A: Tensor, real_B: Tensor, progress: TrainingProgress) -> Mapping[str, Tensor]:
        """One training step on a batch of each domain (on any device: copied to the run's)."""
        if not self.capture or not self._copy_in(real_A, real_B):
            return self.method.train_step(self.runtime.to_device(real_A), self.runtime.to_device(real_B), progress)
        if self.warm_steps < WARMUP_STEPS:
            self.warm_steps += 1
            return self._warm_up(progress)
        if self.stream is None:  # a CPU: the captured function itself, run eagerly
            return self._step(progress)
        if self.graph is None or self.method.capture_key(progress) != self.key:
            self._capture(progress)
        assert self.graph is not None
        self.graph.replay()
        return self.outputs

    def _step(self, progress: TrainingProgress) -> Mapping[str, Tensor]:
        """The step that is captured: ``train_step`` over the static input buffers."""
        assert self.inputs is not None
        return self.method.train_step(*self.inputs, progress)

    def _copy_in(self, real_A: Tensor, real_B: Tensor) -> bool:
        """Copy the batch into the static buffers, made anew for each shape until the capture (a run resumed just before
        an epoch's smaller last batch starts with it); False for a batch of another shape than the captured one's."""
        if self.inputs is None or (self.graph is None and (real_A.shape, real_B.shape) != (self.inputs[0].shape, self.inputs[1].shape)):
            self.inputs = (self.runtime.to_device(real_A).clone(), self.runtime.to_device(real_B).clone())
            return True
        if (real_A.shape, real_B.shape) != (self.inputs[0].shape, self.inputs[1].shape):
            return False
        for static, batch in zip(self.inputs, (real_A, real_B)):
            static.copy_(batch, non_blocking=True)
        return True

    def _warm_up(self, progress: TrainingProgress) -> Mapping[str, Tensor]:
        """An eager step on the capture's side stream (where lazy state is made as the capture will find it)."""
        if self.stream is None:
            return self._step(progress)
        current = torch.cuda.current_stream(self.runtime.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            outputs = self._step(progress)
        current.wait_stream(self.stream)
        return outputs

    def _capture(self, progress: TrainingProgress) -> None:
        """Capture the step anew (freeing the previous graph first), with the generators the method draws from."""
        self.graph, self.outputs = None, {}
        graph = torch.cuda.CUDAGraph()
        for generator in self.method.generators():
            graph.register_generator_state(generator)
        try:  # thread_local: the data loader's pinning thread may use CUDA meanwhile
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                outputs = self._step(progress)
        except Exception as error:
            cause: BaseException = error
            while cause.__context__ is not None:  # the capture's own end fails too: name what broke it first
                cause = cause.__context__
            first_line = (str(cause).strip().splitlines() or [""])[0]
            raise TrainingError(
                f"capturing {type(self.method).__name__}'s training step as a CUDA graph failed ({type(cause).__name__}: {first_line}): "
                "a part of it breaks the capture contract (Method.capture_problem); set train.cuda_graphs: off"
            ) from error
        self.graph = graph
        self.outputs = outputs
        self.key = self.method.capture_key(progress)
