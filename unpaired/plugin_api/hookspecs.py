"""The plugin contract: the hooks a plugin may implement.

A plugin is a module, found through the entry-point group ``unpaired``, with
functions marked ``@unpaired.hookimpl``. Each ``unpaired_register_<kind>`` hook
receives a ``register`` callback and calls it once per component it provides::

    register(name, factory, params_model, description, default=False)

- ``name``: what a spec writes, e.g. ``generator: {name: resnet}``; unique per kind.
- ``factory``: builds the component; its call signature depends on the kind (below).
- ``params_model``: a pydantic model of the factory's parameters. Every field
  needs a default unless a spec must always give it. Unknown keys are always
  rejected, whatever the model's own config says.
- ``description``: one line for ``unpaired plugins``.
- ``default``: True makes it the component a spec gets when it leaves this kind
  out. The built-ins mark the paper's choices; at most one component per kind may.

``unpaired.plugin_api.factories`` types ``register`` (:class:`Register`) and each kind's factory
(``GeneratorFactory``, ...). Built-in components are registered the same way by ``unpaired_plugins``.
A plugin's own tests check each of its components with ``unpaired.testing.check_component``.

The lifecycle hooks below are called on plugins and on *listeners*, objects added for
a while with ``Registry.listening`` (see :func:`unpaired_study_listeners`).
"""

from __future__ import annotations

from pathlib import Path

import pluggy

from unpaired import PROJECT_NAME
from unpaired.plugin_api.factories import Register
from unpaired.plugin_api.lifecycle import RunInfo, RunResult, StudyInfo, StudySummary

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def unpaired_register_methods(register: Register) -> None:
    """Register training methods (CycleGAN, ...): what a variant's ``method`` names.

    ``factory(params, parts: unpaired.plugin_api.methods.MethodParts) -> unpaired.plugin_api.methods.Method``:
    builds its networks, losses, pools and optimisers from ``parts`` (the spec's components, each
    built anew per call, and the run's device and precision). The method names its loss terms,
    returns them from ``train_step`` as a mapping, says which directions it translates and which of
    its networks translates each, and lists every stateful part for the checkpoint (see ``Method``).
    A method that needs more of the other components than their contracts promise (CUT: a generator
    with encoder features) says so in ``Method.variant_problems``, which validation asks. On a
    GPU the loop captures the step once as a CUDA graph and replays it when ``Method.capture_problem``
    returns None: the step must then keep that contract (no host sync, no host-side random choice,
    static shapes, optimisers from ``Runtime.adam``); the default declares a method not capturable.
    """


@hookspec
def unpaired_register_generators(register: Register) -> None:
    """Register generators.

    ``factory(params, norm: unpaired.plugin_api.components.Norm) -> torch.nn.Module``: the
    module maps a batch ``(N, 3, H, W)`` in [-1, 1] to a batch of the same shape
    in [-1, 1]. ``norm`` makes the normalization layers the spec chose for it.

    The engine initialises every conv and linear layer (``train.init``, N(0, 0.02) by default)
    and every batch norm of the networks it builds, unless the module, or a part of it, has
    ``keep_initial_weights = True`` (e.g. a pretrained backbone). This applies to discriminators too.
    Before the first training step the module is checked: same shape out, finite, in [-1, 1].
    Optionally, it gives its encoder's features at named layers (``unpaired.plugin_api.FeatureEncoder``:
    the factory's ``feature_layers(params)`` and the module's ``encode``), which CUT's PatchNCE needs.
    """


@hookspec
def unpaired_register_discriminators(register: Register) -> None:
    """Register discriminators.

    ``factory(params, norm: unpaired.plugin_api.components.Norm) -> torch.nn.Module``: the
    module maps ``(N, 3, H, W)`` images in [-1, 1] to raw scores (logits) whose
    first dimension is N, e.g. a patch map ``(N, 1, h, w)`` or ``(N, 1)``.
    """


@hookspec
def unpaired_register_norms(register: Register) -> None:
    """Register normalization layers.

    ``factory(params) -> unpaired.plugin_api.components.Norm``: a callable making one layer
    per channel count, which also says whether the layer has a learned shift.
    """


@hookspec
def unpaired_register_gan_losses(register: Register) -> None:
    """Register adversarial objectives.

    ``factory(params) -> unpaired.plugin_api.components.GanLoss``. The factory is called once per
    discriminator, so a loss that keeps state (running averages, ...) keeps one per domain. Its calls
    are part of a step that may be captured as a CUDA graph: draw random numbers on the device
    (``torch.rand(..., device=scores.device)``), never synchronise with the host.
    """


@hookspec
def unpaired_register_image_pools(register: Register) -> None:
    """Register image-pool policies (which fakes the discriminator is trained on).

    ``factory(params, seed: int) -> unpaired.plugin_api.components.ImagePool``: the pool must
    draw its random numbers only from its own generator, seeded with ``seed``. A pool that decides on
    the device alone sets ``capturable`` and returns that generator from ``generators()``, so that a
    method's step using it can be captured as a CUDA graph (the built-in ``history`` pool does).
    """


@hookspec
def unpaired_register_loss_weights(register: Register) -> None:
    """Register loss-weight policies (constant, scheduled, ...).

    ``factory(params) -> unpaired.plugin_api.components.LossWeightSchedule``: per epoch with ``at``,
    or per step (warm-ups within an epoch, a fraction of training) by also overriding ``at_step``.
    """


@hookspec
def unpaired_register_datasets(register: Register) -> None:
    """Register datasets of two unpaired image domains A and B.

    ``factory(params) -> unpaired.plugin_api.data.UnpairedData``: gives the training
    pairs and the test images of each domain (see that class). Override its ``describe``
    when the images depend on more than the counts (cached FID features are keyed by it),
    set ``memory_hint`` to the parameter that shrinks the images (shown on out-of-memory), and
    override the classmethod ``input_problems(params)`` to say what keeps the data from being
    found (a missing folder): validation reports it with every other problem of the study.
    """


@hookspec
def unpaired_register_feature_extractors(register: Register) -> None:
    """Register feature extractors for FID/KID.

    ``factory(params) -> torch.nn.Module``: maps uint8 RGB images ``(N, 3, H, W)``
    to features ``(N, D)``. It may resize internally; it must not download anything
    at call time that the user has not been told about. When it cannot be built (e.g. its
    weights are missing), the factory raises with a message that says how to get them.
    Real-image features are cached per extractor parameters; a module whose features depend
    on more (the weights file it found, by its hash) says what in ``cache_identity: str``.
    A factory that can say it without building the module (the factory a class, with a static
    ``cache_identity_of(params) -> str``) spares ``compare``, ``report``, ``plan`` and a ``run``
    with nothing left to score loading it: they only need to know which evaluation the stored
    scores must carry. Where it cannot tell
    (its weights are not on this machine), it raises: they then read the scores unchecked, with
    a note saying why.
    """


@hookspec
def unpaired_register_metrics(register: Register) -> None:
    """Register metrics of translated test images (FID, KID, ...): what ``eval.metrics`` names.

    ``factory(params) -> unpaired.plugin_api.metrics.Metric``: says whether lower is better and whether it
    compares feature rows (of ``eval.feature_extractor``, in float32) or uint8 images, and computes one
    ``Score`` per direction the method translates, from the whole test split.
    """


@hookspec
def unpaired_register_executors(register: Register) -> None:
    """Register executors: where a study's runs train, what ``execution: {executor: NAME, ...}`` names (its other
    keys are the executor's parameters; ``unpaired run`` offers each parameter as an option, ``--NAME-WITH-DASHES``).

    ``factory(params, context: unpaired.execution.jobs.ExecutorContext) -> unpaired.execution.jobs.Executor``: connects
    to wherever the runs train and checks what it can before anything trains (raise an ``UnpairedError`` naming what
    to do). Its ``run(jobs, collect)`` trains each ``RunJob`` through ``unpaired.execution.jobs.train_job`` in some worker
    (a process per run can use ``python -m unpaired.execution.worker``), calls ``collect(job, outcome)`` with each
    ``RunOutcome``, and on a stop signal stops its workers (they checkpoint), collects them and raises ``StopRequested``.
    """


# Lifecycle hooks. ``run`` is a ``RunInfo`` (run id, variant, seed, folder, resolved spec), ``result`` a
# ``RunResult``, ``study`` a ``StudyInfo`` (name, source, baseline, seeds, its runs' ``RunInfo``, the study as resolved)
# and ``summary`` a ``StudySummary``: all importable from unpaired.plugin_api (defined in ``plugin_api/lifecycle.py``).


@hookspec
def unpaired_study_listeners(study: StudyInfo) -> list[object]:
    """Return objects whose lifecycle hook implementations should follow this study (e.g. a tracker).

    Called once when ``unpaired run`` starts a study, before anything is trained. The objects
    are registered for the study's duration, in this process and in every process that trains
    one of its runs, so they must pickle (keep connections out of their pickled state).
    """


@hookspec
def unpaired_on_study_start(study: StudyInfo, out: Path, machines: int) -> None:
    """Called once before a study's first run trains, after its runs were checked; ``out`` is its output folder,
    ``machines`` how many machines its runs may train on (1 but on a cluster). An exception here stops the
    study before anything trains."""


@hookspec
def unpaired_on_run_start(run: RunInfo) -> None:
    """Called when a run starts or resumes, in the process that trains it, before its data and networks
    are loaded (so a run that cannot even start is seen too)."""


@hookspec
def unpaired_on_step(run: RunInfo, epoch: int, step: int, losses: dict[str, float], lr: float) -> None:
    """Called every ``train.log_every`` steps with that step's loss terms (already on the host)
    and the learning rate. ``epoch`` is 0-based, ``step`` counts steps since the run began."""


@hookspec
def unpaired_on_epoch_end(run: RunInfo, epoch: int, metrics: dict[str, float]) -> None:
    """Called after each epoch with its mean loss terms, ``lr``, ``epoch_seconds`` (that epoch's) and ``it_per_s`` (always
    present), and FID/KID when that epoch was scored. ``epoch`` is 1-based: the number of epochs completed."""


@hookspec
def unpaired_on_run_end(run: RunInfo, result: RunResult) -> None:
    """Called once when a run stops: ``result.status`` is ``finished``, ``failed`` or
    ``interrupted``; a failure carries ``result.error``. ``result.json`` is written by then."""


# The names these two hooks had in 0.1, still called (right after unpaired_on_run_start, right before
# unpaired_on_run_end) for the plugins that implement them, with a DeprecationWarning when they register.


@hookspec(
    warn_on_impl=DeprecationWarning(
        "unpaired_on_variant_start is deprecated: implement unpaired_on_run_start, "
        "the same hook under its new name; the old one goes in the next release"
    )
)
def unpaired_on_variant_start(run: RunInfo) -> None:
    """Deprecated: :func:`unpaired_on_run_start`."""


@hookspec(
    warn_on_impl=DeprecationWarning(
        "unpaired_on_variant_end is deprecated: implement unpaired_on_run_end, the same hook under its new name; the old one goes in the next release"
    )
)
def unpaired_on_variant_end(run: RunInfo, result: RunResult) -> None:
    """Deprecated: :func:`unpaired_on_run_end`."""


@hookspec
def unpaired_on_study_end(study: StudyInfo, out: Path, summary: StudySummary) -> None:
    """Called once when a study's runs have been tried (or a signal stopped them); ``summary`` says which
    finished, failed, were interrupted or skipped."""
