"""Loss-weight policies: constant (the paper's) and an identity weight that decays linearly to 0."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from unpaired.plugin_api import LossWeights, LossWeightSchedule, hookimpl


class ConstantParams(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    adversarial: float = Field(1.0, ge=0, description="weight of each generator's adversarial loss")
    cycle: float = Field(10.0, ge=0, description="weight of the L1 cycle loss, per direction (paper: lambda = 10)")
    identity: float = Field(5.0, ge=0, description="weight of the L1 identity loss, per direction (paper: 0.5 x lambda); 0 turns it off")

    @model_validator(mode="after")
    def _something_to_learn(self) -> ConstantParams:
        if self.adversarial == self.cycle == self.identity == 0:
            raise ValueError("adversarial, cycle and identity are all 0: the generators would never change; give one a weight above 0")
        return self


class Constant(LossWeightSchedule):
    """The same weights throughout training."""

    def __init__(self, params: ConstantParams):
        self.weights = LossWeights(params.adversarial, params.cycle, params.identity)

    def at(self, epoch: int, total_epochs: int) -> LossWeights:
        return self.weights


class IdentityDecay(LossWeightSchedule):
    """Constant adversarial and cycle weights; identity weight falling linearly from its start value
    at epoch 0 to 0 at the last epoch (reached only as the run ends)."""

    def __init__(self, params: ConstantParams):
        self.start = LossWeights(params.adversarial, params.cycle, params.identity)

    def at(self, epoch: int, total_epochs: int) -> LossWeights:
        remaining = 1.0 - epoch / max(total_epochs, 1)
        return LossWeights(self.start.adversarial, self.start.cycle, self.start.identity * remaining)


@hookimpl
def unpaired_register_loss_weights(register):
    register("constant", Constant, ConstantParams, "fixed weights: adversarial 1, cycle 10, identity 5 (paper)", default=True)
    register("identity_decay", IdentityDecay, ConstantParams, "identity weight decays linearly to 0 over training")
