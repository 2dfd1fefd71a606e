"""Commands outside a study: plugins, train, translate, fid, data."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from unpaired.errors import InputError, UsageError
from unpaired.plugin_api.components import Component
from unpaired.cli.plugins import registry as plugin_registry


def _type_json(annotation: Any) -> dict[str, object]:
    """A parameter's type as people write it (``int``, ``float | None``, ``Literal['a', 'b']``); a Literal also lists its choices."""
    name = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
    return {"type": name, **({"choices": list(typing.get_args(annotation))} if typing.get_origin(annotation) is typing.Literal else {})}


def _parameters_json(component: Component) -> dict[str, dict[str, object]]:
    return {
        field: {"default": default, **_type_json(info.annotation), "description": info.description or ""}
        for (field, info), default in zip(component.params_model.model_fields.items(), component.parameters().values())
    }


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every registered component with its origin, parameters and description.
    Exits 1 when a plugin failed to load or two registrations claim one name (a health check for an install)."""
    registry = plugin_registry()
    components = registry.components()
    conflicts = registry.conflicts()
    claimed = {(c.kind, c.name) for c in components if sum((o.kind, o.name) == (c.kind, c.name) for o in components) > 1}
    if args.json:
        rows = [
            {
                "kind": c.kind,
                "name": c.name,
                "distribution": c.distribution,
                "version": c.version,
                "description": c.description,
                "default": c.default,
                "parameters": _parameters_json(c),
                "conflict": (c.kind, c.name) in claimed,
            }
            for c in components
        ]
        print(json.dumps({"components": rows, "problems": registry.problems + conflicts}, indent=2, default=str))
    else:
        kind = None
        for c in components:
            if c.kind != kind:
                kind = c.kind
                print(f"{kind}:")
            default = "  [default]" if c.default else ""
            conflict = "  CONFLICT (see below)" if (c.kind, c.name) in claimed else ""
            print(f"  {c.name}  ({c.distribution} {c.version})  {c.description}{default}{conflict}")
            params = "  ".join(f"{k}={v!r}" for k, v in c.parameters().items())
            print(f"      {params or '(no parameters)'}")
        for conflict in conflicts:  # plugin load problems were already named on stderr
            print(f"warning: {conflict}", file=sys.stderr)
    return 1 if registry.problems or conflicts else 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one variant spec into an output folder (resuming if it holds a checkpoint of it)."""
    from unpaired.config.resolved import load_variant
    from unpaired.results.study_folder import is_study_folder
    from unpaired.storage.files import check_makeable_folder
    from unpaired.storage.run_folder import RunFolder
    from unpaired.training.run import train_run
    from unpaired.signals import stop_requested

    registry = plugin_registry()
    variant = load_variant(args.spec, registry, args.overrides)
    out = Path(args.out)
    for study, what in [(out, "a study's output folder"), (out.parent, f"in the study output folder {out.parent}, where its variant folders go")]:
        if is_study_folder(study):  # the study's index and run folders would mix with this run's files
            raise InputError(f"--out {out} is {what}: train into a folder of its own")
    check_makeable_folder(out, "--out")
    folder = RunFolder(out)
    print(f"training run {variant.run_id} into {folder}", file=sys.stderr)
    outcome = train_run(variant, folder, registry, show_progress=not args.quiet)
    if outcome.result is None:  # another live process trains it
        print(f"error: {folder} is being worked on by {outcome.detail}", file=sys.stderr)
        return 1
    result = outcome.result
    print(json.dumps(result.model_dump(mode="json"), indent=1))
    if result.status == "interrupted":
        print(f"interrupted: {result.error}", file=sys.stderr)
        return 128 + (stop_requested() or signal.SIGINT)
    if result.status == "failed":
        details = folder.error_file.read_text() if folder.error_file.is_file() else ""
        if details.startswith("Traceback"):  # not an error we expected: show where it came from
            print(details, file=sys.stderr, end="")
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    """Translate an image or a folder of images with a trained generator."""
    from unpaired.tools.translate import collect_inputs, load_generator, translate
    from unpaired.devices import pick_device

    generator, size, direction = load_generator(Path(args.checkpoint), args.direction, plugin_registry())
    device = pick_device(args.device, "--device")
    written, skipped = translate(generator, collect_inputs(Path(args.input)), Path(args.out), args.size or size, device, args.keep_aspect)
    shape = " on the shorter side, aspect ratios kept" if args.keep_aspect else ""
    print(f"wrote {len(written)} image(s) to {args.out}, translated {direction} at {args.size or size} px{shape}")
    for reason in skipped:
        print(f"warning: skipped {reason}", file=sys.stderr)
    return 0 if written else 1


def cmd_fid(args: argparse.Namespace) -> int:
    """The default metrics (FID and KID) between two image folders, pre-processed like test images."""
    from unpaired.config.resolved import ResolvedEval
    from unpaired.evaluation.features import EvaluationError, folder_images
    from unpaired.evaluation.scoring import Scorer
    from unpaired.devices import gpu_algorithms, pick_device

    registry = plugin_registry()
    params = {**({"weights": args.weights} if args.weights else {}), **parse_params(args.param)}
    config = {"name": args.extractor or registry.default("feature_extractor"), **params}
    metrics = tuple(registry.resolve("metric", {"name": name}) for name in registry.defaults("metric"))
    evaluation = ResolvedEval(metrics, 0, args.batch_size, registry.resolve("feature_extractor", config, where="--extractor"), None)
    built = evaluation.build_metrics().values()
    fewest = max(metric.min_images for metric in built)
    images, problems = [], []
    for folder in (args.first, args.second):  # both folders read, and every problem of either named, before the extractor loads
        try:
            images.append(folder_images(Path(folder), args.size, fewest))
        except EvaluationError as error:
            problems.append(str(error))
    if problems:
        raise EvaluationError("; ".join(problems))
    with gpu_algorithms(deterministic=False):  # inference only: cuDNN may autotune
        scores = Scorer(evaluation, pick_device(args.device, "--device")).score_images(*images)
    print("   ".join(f"{name} {value:.6g}" for name, value in scores.items()))
    for metric in built:  # a study's compare and report say it; so must a score alone
        if caveat := metric.caveat(min(map(len, images))):
            print(f"note: {caveat}", file=sys.stderr)
    return 0


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``["size=32", "flip=false"]`` -> ``{"size": 32, "flip": False}`` (values read as YAML scalars)."""
    params = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise UsageError(f"expected KEY=VALUE, got {pair!r}")
        params[key] = yaml.safe_load(value)
    return params


def cmd_data_export(args: argparse.Namespace) -> int:
    """Write a dataset component's images in the folder layout."""
    from unpaired.tools.export import export_folder_layout

    config = {"name": args.dataset, **parse_params(args.params)}
    counts = export_folder_layout(plugin_registry().build("dataset", config, where="data"), Path(args.out))
    print(f"wrote {args.out}: " + ", ".join(f"{folder} {n}" for folder, n in counts.items()))
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    """Download a public CycleGAN dataset into the folder layout."""
    from unpaired.tools.download import download_dataset

    folder = download_dataset(args.name, Path(args.to))
    print(f"{args.name} is ready in {folder} (use data: {{name: folder, root: {folder}}})")
    return 0
