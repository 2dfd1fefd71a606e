"""Weight initialisation of generators and discriminators, as in the official CycleGAN code."""

from __future__ import annotations

from torch import nn

from unpaired.config.spec import InitScheme


def init_weights(module: nn.Module, scheme: InitScheme = "normal", gain: float = 0.02) -> None:
    """Initialise conv and linear weights in place; zero their biases.

    ``normal``: N(0, gain) (the paper: gain 0.02); ``xavier``: Xavier-normal with ``gain``;
    ``kaiming``: Kaiming-normal (fan-in, ReLU), ``gain`` unused; ``orthogonal``: with ``gain``.
    Batch-norm scales are drawn from N(1, gain) and their shifts zeroed; other norms keep theirs.
    A module (the network or any part of it) whose ``keep_initial_weights`` is True is left as its plugin
    made it, with everything inside it (e.g. a pretrained backbone).
    """
    for layer in _modules_to_initialise(module):
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if scheme == "normal":
                nn.init.normal_(layer.weight, 0.0, gain)
            elif scheme == "xavier":
                nn.init.xavier_normal_(layer.weight, gain=gain)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(layer.weight, a=0, mode="fan_in")
            elif scheme == "orthogonal":
                nn.init.orthogonal_(layer.weight, gain=gain)
            else:
                raise ValueError(f"unknown init scheme {scheme!r}; use one of normal, xavier, kaiming, orthogonal")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)


def _modules_to_initialise(module: nn.Module) -> list[nn.Module]:
    """``module.modules()`` (the same order, each once) without the parts that keep their initial weights."""
    found: dict[int, nn.Module] = {}

    def visit(layer: nn.Module) -> None:
        if id(layer) in found or getattr(layer, "keep_initial_weights", False):
            return
        found[id(layer)] = layer
        for child in layer.children():
            visit(child)

    visit(module)
    return list(found.values())
