"""Weight initialisation of generators and discriminators, as in the official CycleGAN code."""

from __future__ import annotations

from torch import nn

from unpaired.config.spec import InitScheme


def init_weights(module: nn.Module, scheme: InitScheme = "normal", gain: float = 0.02) -> None:
    """Initialise conv and linear weights in place; zero their biases.

    ``normal``: N(0, gain) (the paper: gain 0.02); ``xavier``: Xavier-normal with ``gain``;
    ``kaiming``: Kaiming-normal (fan-in, ReLU), ``gain`` unused; ``orthogonal``: with ``gain``.
    Batch-norm scales are drawn from N(1, gain) and their shifts zeroed; other norms keep theirs.
    """
    for layer in module.modules():
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
