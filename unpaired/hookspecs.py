"""The plugin contract: the hooks a plugin may implement.

A plugin is a module, found through the entry-point group ``unpaired``, with
functions marked ``@unpaired.hookimpl``. Each ``unpaired_register_<kind>`` hook
receives a ``register`` callback and calls it once per component it provides::

    register(name, factory, params_model, description)

- ``name``: what a spec writes, e.g. ``generator: {name: resnet}``; unique per kind.
- ``factory``: builds the component; its call signature depends on the kind (below).
- ``params_model``: a pydantic model of the factory's parameters. Every field
  needs a default unless a spec must always give it. Unknown keys are always
  rejected, whatever the model's own config says.
- ``description``: one line for ``unpaired plugins``.

Built-in components are registered the same way by ``unpaired_plugins``.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

from unpaired import PROJECT_NAME

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

Register = Callable[[str, Callable[..., Any], type, str], None]
"""``register(name, factory, params_model, description)``, passed to every registration hook."""


@hookspec
def unpaired_register_generators(register: Register) -> None:
    """Register generators.

    ``factory(params, norm: unpaired.components.Norm) -> torch.nn.Module``: the
    module maps a batch ``(N, 3, H, W)`` in [-1, 1] to a batch of the same shape
    in [-1, 1]. ``norm`` makes the normalization layers the spec chose for it.
    """


@hookspec
def unpaired_register_discriminators(register: Register) -> None:
    """Register discriminators.

    ``factory(params, norm: unpaired.components.Norm) -> torch.nn.Module``: the
    module maps ``(N, 3, H, W)`` images in [-1, 1] to raw scores (logits) whose
    first dimension is N, e.g. a patch map ``(N, 1, h, w)`` or ``(N, 1)``.
    """


@hookspec
def unpaired_register_norms(register: Register) -> None:
    """Register normalization layers.

    ``factory(params) -> unpaired.components.Norm``: a callable making one layer
    per channel count, which also says whether the layer has a learned shift.
    """


@hookspec
def unpaired_register_gan_losses(register: Register) -> None:
    """Register adversarial objectives.

    ``factory(params) -> unpaired.components.GanLoss``.
    """


@hookspec
def unpaired_register_image_pools(register: Register) -> None:
    """Register image-pool policies (which fakes the discriminator is trained on).

    ``factory(params, seed: int) -> unpaired.components.ImagePool``: the pool must
    draw its random numbers only from its own generator, seeded with ``seed``.
    """


@hookspec
def unpaired_register_loss_weights(register: Register) -> None:
    """Register loss-weight policies (constant, scheduled, ...).

    ``factory(params) -> unpaired.components.LossWeightSchedule``.
    """


@hookspec
def unpaired_register_datasets(register: Register) -> None:
    """Register datasets of two unpaired image domains A and B.

    ``factory(params) -> unpaired.data.UnpairedData``: gives the training
    pairs and the test images of each domain (see that class).
    """


@hookspec
def unpaired_register_feature_extractors(register: Register) -> None:
    """Register feature extractors for FID/KID.

    ``factory(params) -> torch.nn.Module``: maps uint8 RGB images ``(N, 3, H, W)``
    to features ``(N, D)``. It may resize internally; it must not download anything
    at call time that the user has not been told about.
    """


# Lifecycle hooks: called by the engine while a variant trains. ``run`` is an
# ``unpaired.engine.RunInfo`` (variant id, output folder, resolved spec).


@hookspec
def unpaired_on_step(run: Any, epoch: int, step: int, losses: dict[str, float], lr: float) -> None:
    """Called every ``train.log_every`` steps with that step's loss terms (already on the host)
    and the learning rate. ``epoch`` is 0-based, ``step`` counts steps since the run began."""


@hookspec
def unpaired_on_epoch_end(run: Any, epoch: int, metrics: dict[str, float]) -> None:
    """Called after each epoch with its mean loss terms, ``lr``, ``seconds`` and ``it_per_s``.
    ``epoch`` is 1-based here: the number of epochs completed."""


@hookspec
def unpaired_on_variant_end(run: Any, result: dict[str, Any]) -> None:
    """Called once when a variant stops: ``result["status"]`` is ``finished``, ``failed`` or
    ``interrupted``; a failure carries ``error``."""
