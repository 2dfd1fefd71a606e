"""The variant spec: every choice that defines one training run (the method and its components).

A spec is plain data (YAML or JSON). Its own fields are checked by the pydantic models
here; each component's parameters are checked by that component's own model when the
variant is resolved (:mod:`unpaired.config.resolved`). A component field left out gets
the component that plugins register as that kind's default (the built-ins: the paper's
choices) with that component's own parameter defaults; nothing here repeats them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from unpaired.errors import UnpairedError
from unpaired.plugin_api.components import ComponentKind

Precision = Literal["fp32", "bf16", "fp16"]
InitScheme = Literal["normal", "xavier", "kaiming", "orthogonal"]
DEVICE_NAME = r"^(auto|cpu|mps|cuda(:\d+)?)$"
"""The devices a run or a command may name: ``auto`` picks cuda, then mps, then cpu."""
DEFAULT_NOTE = "left out: the default component of its kind (marked [default] by `unpaired plugins`)"


@dataclass(frozen=True)
class Slot:
    """Marks a spec field that names a component of ``kind``. Left out, it gets the choice of the field
    ``fallback`` when there is one (``generator_norm`` -> ``norm``), else the kind's default component."""

    kind: ComponentKind
    fallback: str | None = None


class ComponentConfig(BaseModel):
    """``{name: ..., **params}``: which component to use; its parameters are checked by the component itself."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="a registered component name (see `unpaired plugins`)")


AdamBeta = Annotated[float, Field(ge=0, lt=1)]
"""One of Adam's betas: torch refuses any other when the optimiser is built, after validation."""
FLOAT32_MAX = 3.4028234663852886e38
"""The largest learning rate and initial gain: Adam's step and the weights are float32, which cannot hold a larger one."""
MAX_SEED = 2**32 - 1
"""The largest seed: NumPy's global generator (which every run seeds) refuses any larger one, after validation."""


class TrainConfig(BaseModel):
    """Optimisation, schedule and runtime settings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    epochs: int = Field(100, ge=0, description="epochs at the initial learning rate")
    decay_epochs: int = Field(100, ge=0, description="epochs of linear learning-rate decay towards 0 that follow")
    batch_size: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0, description="Adam learning rate of generators and discriminators")
    betas: tuple[AdamBeta, AdamBeta] = Field((0.5, 0.999), description="Adam betas, each in [0, 1)")
    init: InitScheme = Field("normal", description="weight initialisation: normal | xavier | kaiming | orthogonal")
    init_gain: float = Field(0.02, gt=0, description="std of `normal`, gain of xavier/orthogonal")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds weights, data order, augmentation and image pools")
    precision: Precision = Field("fp32", description="fp32, or autocast to bf16 / fp16 (fp16 with grad scaling)")
    channels_last: bool = Field(False, description="NHWC memory format (often faster on GPUs)")
    compile: bool = Field(False, description="torch.compile the networks")
    cuda_graphs: Literal["auto", "on", "off"] = Field(
        "auto",
        description="capture the whole training step as a CUDA graph and replay it (auto: on CUDA when the method is capturable "
        "and precision is not fp16; on: required, an error otherwise)",
    )
    deterministic: bool = Field(
        False,
        description="deterministic GPU algorithms: a rerun and a resume give the same weights bit for bit (slower); "
        "otherwise cuDNN autotunes and GPU runs are equal only in distribution",
    )
    device: str = Field("auto", pattern=DEVICE_NAME, description="auto picks cuda, then mps, then cpu")
    num_workers: int = Field(2, ge=0, description="data-loading processes")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (also written at the end and on SIGINT/SIGTERM)")
    sample_every: int = Field(1, ge=1, description="epochs between sample grids")
    log_every: int = Field(100, ge=1, description="steps between loss readings (the only host syncs of the loop)")
    on_corrupt_checkpoint: Literal["restart", "stop"] = Field(
        "restart",
        description="a checkpoint that fails its checks: restart the run from the beginning (the file is kept "
        "beside it as .corrupt, with a warning), or stop the run with the error",
    )

    @field_validator("cuda_graphs", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        """YAML reads a bare ``on`` and ``off`` as true and false: take them as written."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("lr", "init_gain")
    @classmethod
    def _fits_float32(cls, value: float, info: ValidationInfo) -> float:
        if value > FLOAT32_MAX:
            held = {"lr": "Adam steps in float32", "init_gain": "the weights it scales are float32"}[info.field_name or ""]
            raise ValueError(f"at most {FLOAT32_MAX:.3g}: {held}, which holds no larger number")
        return value

    @model_validator(mode="after")
    def _trains_something(self) -> TrainConfig:
        if self.total_epochs == 0:
            raise ValueError("epochs + decay_epochs is 0: a run would train nothing and score its untrained generators")
        return self

    @model_validator(mode="after")
    def _graphs_replayable(self) -> TrainConfig:
        if self.cuda_graphs == "on" and not self.device.startswith(("auto", "cuda")):
            raise ValueError(f"cuda_graphs: on needs a CUDA device, and device is {self.device!r}; use device: cuda (or auto) or cuda_graphs: auto")
        if self.cuda_graphs == "on" and self.precision == "fp16":
            raise ValueError("cuda_graphs: on cannot replay fp16's grad scaler (it decides on the host); use precision: bf16 or cuda_graphs: auto")
        return self

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.decay_epochs

    def steps_per_epoch(self, train_length: int) -> int:
        """Steps in one epoch of ``train_length`` pairs (the last batch may be smaller)."""
        return -(-train_length // self.batch_size)


class EvalConfig(BaseModel):
    """How trained generators are scored: each metric on the full test split, in each direction the method translates."""

    model_config = ConfigDict(extra="forbid")
    metrics: list[str | ComponentConfig] | None = Field(
        None,
        description="the metrics scored after training, each a name or {name, **params}; [] scores nothing; "
        "left out: every metric marked [default] by `unpaired plugins`",
    )
    every: int = Field(0, ge=0, description="also score every N epochs and keep the best generators (0: only at the end)")
    select_best_by: str | None = Field(
        None,
        description="with `every`: the score column whose best epoch is kept, a metric's <name>_mean, _a2b or _b2a "
        "(default: the first metric's mean over directions, or its one direction)",
    )
    batch_size: int = Field(25, ge=1, description="images per batch when translating and extracting features")
    feature_extractor: Annotated[ComponentConfig | None, Slot("feature_extractor")] = Field(
        None, description="the network whose features the metrics compare; " + DEFAULT_NOTE
    )


RUNTIME_ONLY_FIELDS = {
    "device",
    "num_workers",
    "checkpoint_every",
    "sample_every",
    "log_every",
    "compile",
    "channels_last",
    "cuda_graphs",
    "deterministic",
    "on_corrupt_checkpoint",
}
"""Train fields that change how fast or where a run goes, not its result; they are left out of the run id."""


class VariantSpec(BaseModel):
    """One training run. Every field left out has the paper's value."""

    model_config = ConfigDict(extra="forbid")
    method: Annotated[ComponentConfig | None, Slot("method")] = Field(None, description="the training method; " + DEFAULT_NOTE)
    data: Annotated[ComponentConfig, Slot("dataset")] = Field(description="the two image domains, e.g. {name: folder, root: datasets/horse2zebra}")
    generator: Annotated[ComponentConfig | None, Slot("generator")] = Field(None, description=DEFAULT_NOTE)
    discriminator: Annotated[ComponentConfig | None, Slot("discriminator")] = Field(None, description=DEFAULT_NOTE)
    norm: Annotated[ComponentConfig | None, Slot("norm")] = Field(None, description="norm of both sides; " + DEFAULT_NOTE)
    generator_norm: Annotated[ComponentConfig | None, Slot("norm", fallback="norm")] = Field(
        None, description="norm of the generators only (default: `norm`)"
    )
    discriminator_norm: Annotated[ComponentConfig | None, Slot("norm", fallback="norm")] = Field(
        None, description="norm of the discriminators only (default: `norm`)"
    )
    gan_loss: Annotated[ComponentConfig | None, Slot("gan_loss")] = Field(None, description=DEFAULT_NOTE)
    loss_weights: Annotated[ComponentConfig | None, Slot("loss_weights")] = Field(None, description=DEFAULT_NOTE)
    image_pool: Annotated[ComponentConfig | None, Slot("image_pool")] = Field(None, description=DEFAULT_NOTE)
    train: TrainConfig = Field(default_factory=TrainConfig)
    samples: int = Field(4, ge=0, le=64, description="fixed test images per domain shown in the sample grids")
    eval: EvalConfig = Field(default_factory=EvalConfig)


@functools.cache
def component_slots(model: type[BaseModel] = VariantSpec, prefix: str = "") -> dict[str, Slot]:
    """Dotted path -> :class:`Slot` of every field that names a component, nested models included, in field order."""
    slots: dict[str, Slot] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        slot = next((m for m in info.metadata if isinstance(m, Slot)), None)
        if slot is not None:
            slots[path] = slot
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            slots.update(component_slots(info.annotation, f"{path}."))
    return slots


SHOWN_PROBLEMS = 20
"""How many of a spec's problems its error lists; the rest are counted."""


class SpecError(UnpairedError):
    """A spec is invalid. ``problems`` holds ``(dotted_path, message)`` pairs; ``source`` names the file."""

    exit_code = 2

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source, self.problems = source, problems
        lines = [f"  {path}: {message}" if path else f"  {message}" for path, message in problems[:SHOWN_PROBLEMS]]
        if len(problems) > SHOWN_PROBLEMS:
            lines.append(f"  ... and {len(problems) - SHOWN_PROBLEMS} more (fix these first)")
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{source}: {count}:\n" + "\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (worker -> study)
        return type(self), (self.source, self.problems)
