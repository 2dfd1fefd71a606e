"""The built-in executors: this machine (one run at a time, or several in worker processes) and a Ray cluster."""

from __future__ import annotations

from pydantic import BaseModel, Field

from unpaired import hookimpl
from unpaired.execution.jobs import Executor, ExecutorContext
from unpaired.plugin_api.factories import Register


class LocalParams(BaseModel):
    jobs: int = Field(1, ge=1, description="runs trained at once, as separate processes (on the GPUs in turn, or sharing the CPU cores)")


class RayParams(BaseModel):
    address: str | None = Field(None, description="the Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: Ray on this machine)")
    cpus_per_run: float = Field(1.0, gt=0, description="CPUs each run reserves (also its torch thread count, rounded down)")
    gpus_per_run: float = Field(0.0, ge=0, description="GPUs each run reserves; fractions let small runs share a GPU")
    max_retries: int = Field(3, ge=0, description="times a run is started again after its worker or node died")


def local(params: LocalParams, context: ExecutorContext) -> Executor:
    from unpaired.execution.local import LocalExecutor

    return LocalExecutor(params.jobs, context)


def ray(params: RayParams, context: ExecutorContext) -> Executor:
    from unpaired.execution.ray_executor import RayExecutor  # Ray is optional and slow to import

    return RayExecutor(params.address, params.cpus_per_run, params.gpus_per_run, params.max_retries, context)


@hookimpl
def unpaired_register_executors(register: Register) -> None:
    register("local", local, LocalParams, "this machine: one run after another, or --jobs N at once", default=True)
    register("ray", ray, RayParams, "a Ray cluster: each run a task, retried on another node when its node dies (pip install 'unpaired[ray]')")
