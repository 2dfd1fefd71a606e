"""Watching a method's loss terms on the device: their sums over an epoch and the first step each went non-finite."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from unpaired.training.contracts import ContractError


class LossWatch:
    """The loss terms of every step, stacked in the method's order, kept on the device: no host sync per step."""

    def __init__(self, names: tuple[str, ...], device: torch.device, who: str):
        self.names, self.who = names, who
        self.first_bad_step = torch.full((len(names),), -1, dtype=torch.long, device=device)
        """The first step at which each term was non-finite (-1: never)."""
        self.step = torch.zeros((), dtype=torch.long, device=device)

    def record(self, terms: Mapping[str, Tensor]) -> Tensor:
        """The step's terms as one detached float vector in ``names`` order; notes any that are non-finite."""
        if terms.keys() != set(self.names):
            raise ContractError(
                f"{self.who} declares the loss terms {', '.join(self.names)} but its train_step returned "
                f"{', '.join(terms)}: return exactly the declared terms"
            )
        values = torch.stack([terms[name].detach().float() for name in self.names])
        self.step += 1
        newly_bad = ~torch.isfinite(values) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(newly_bad, self.step, self.first_bad_step)
        return values

    def first_bad(self) -> tuple[str, int] | None:
        """The term that went non-finite first and its step (the one sync it needs), or None."""
        bad = [(name, step) for name, step in zip(self.names, self.first_bad_step.tolist()) if step >= 0]
        return min(bad, key=lambda pair: pair[1]) if bad else None
