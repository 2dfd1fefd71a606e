"""The built-in executors: this machine (one run at a time, or several in worker processes) and a Ray cluster."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from unpaired import hookimpl
from unpaired.plugin_api import Executor, ExecutorContext
from unpaired.plugin_api.factories import Register


RUNS_PER_GPU = 1
"""How many runs share a GPU by default. Measured on an H200 (README, Performance): one paper-sized run whose step is
captured as a CUDA graph keeps the GPU busy on its own, and runs in separate processes take turns on a GPU rather than
overlap, so packing 2, 3 or 4 gave 0.75x, 0.98x and 1.02x the throughput of one at a time. Runs that leave the GPU
idle (eager steps of small networks) can gain from more, and so may runs that are clients of a CUDA MPS server, whose
kernels from different processes overlap: ``benchmarks/bench_study.py --mps`` measures that (not yet on a GPU)."""


class LocalParams(BaseModel):
    jobs: int | None = Field(
        None,
        ge=1,
        description="runs trained at once, each in a worker process, on the GPUs in turn or sharing the CPU cores (default: "
        "runs_per_gpu on each visible GPU; 1, in this process, without a GPU)",
    )
    runs_per_gpu: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description=f"runs that share each GPU when jobs is left out (auto: {RUNS_PER_GPU}, as measured on an H200)"
    )


class RayParams(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    address: str | None = Field(None, description="the Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: Ray on this machine)")
    cpus_per_run: float = Field(1.0, gt=0, description="CPUs each run reserves (also its torch thread count, rounded down)")
    gpus_per_run: float = Field(0.0, ge=0, description="GPUs each run reserves; fractions let small runs share a GPU")
    max_retries: int = Field(3, ge=0, description="times a run is started again after its worker or node died")


def local(params: LocalParams, context: ExecutorContext) -> Executor:
    from unpaired.execution.local import LocalExecutor

    if params.jobs is not None:
        jobs = params.jobs
    else:
        jobs = max(1, torch.cuda.device_count() * (RUNS_PER_GPU if params.runs_per_gpu == "auto" else params.runs_per_gpu))
    return LocalExecutor(jobs, context)


def ray(params: RayParams, context: ExecutorContext) -> Executor:
    from unpaired.execution.ray_executor import RayExecutor  # Ray is optional and slow to import

    return RayExecutor(params.address, params.cpus_per_run, params.gpus_per_run, params.max_retries, context)


@hookimpl
def unpaired_register_executors(register: Register) -> None:
    register("local", local, LocalParams, "this machine: a run per GPU at once (runs_per_gpu), else one at a time, or --jobs N", default=True)
    register("ray", ray, RayParams, "a Ray cluster: each run a task, retried on another node when its node dies (pip install 'unpaired[ray]')")
