"""The ``unpaired`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from pathlib import Path

from unpaired import __version__
from unpaired.components import Component
from unpaired.data import DataError, export_folder_layout
from unpaired.download import DATASETS, DownloadError, download_dataset
from unpaired.evaluate import EvaluationError
from unpaired.tracking import TrackingError
from unpaired.registry import ComponentError, default_registry
from unpaired.spec import SpecError, load_variant
from unpaired.study import Study, load_study, study_json_schema


def _parameters_json(component: Component) -> dict[str, dict[str, object]]:
    return {
        field: {
            "default": default,
            "type": getattr(info.annotation, "__name__", str(info.annotation)),
            "description": info.description or "",
        }
        for (field, info), default in zip(component.params_model.model_fields.items(), component.parameters().values())
    }


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every registered component with its origin, parameters and description."""
    registry = default_registry()
    components = registry.components()
    counts: dict[tuple[str, str], int] = {}
    for c in components:
        counts[(c.kind, c.name)] = counts.get((c.kind, c.name), 0) + 1
    if args.json:
        rows = [
            {
                "kind": c.kind,
                "name": c.name,
                "distribution": c.distribution,
                "version": c.version,
                "description": c.description,
                "parameters": _parameters_json(c),
                "conflict": counts[(c.kind, c.name)] > 1,
            }
            for c in components
        ]
        print(json.dumps({"components": rows, "problems": registry.problems}, indent=2, default=str))
    else:
        kind = None
        for c in components:
            if c.kind != kind:
                kind = c.kind
                print(f"{kind}:")
            conflict = "  CONFLICT: registered by more than one plugin" if counts[(c.kind, c.name)] > 1 else ""
            print(f"  {c.name}  ({c.distribution} {c.version})  {c.description}{conflict}")
            params = "  ".join(f"{k}={v!r}" for k, v in c.parameters().items())
            print(f"      {params or '(no parameters)'}")
    for problem in registry.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one variant spec into an output folder (resuming if it holds a checkpoint of it)."""
    from unpaired.engine import train_variant

    registry = default_registry()
    variant = load_variant(args.spec, registry)
    out = Path(args.out)
    print(f"training variant {variant.variant_id} into {out}", file=sys.stderr)
    result = train_variant(variant, out, registry, show_progress=not args.quiet)
    print(json.dumps(result, indent=1))
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    """Translate an image or a folder of images with a trained generator."""
    from unpaired.engine import pick_device
    from unpaired.translate import collect_inputs, load_generator, translate

    generator, size = load_generator(Path(args.checkpoint), args.direction, default_registry())
    written = translate(generator, collect_inputs(Path(args.input)), Path(args.out), args.size or size, pick_device(args.device))
    print(f"wrote {len(written)} image(s) to {args.out}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Write the synthetic dataset in the CycleGAN folder layout."""
    config = {"name": "synthetic", "size": args.size, "n_train": args.n, "n_test": args.n_test, "seed": args.seed}
    counts = export_folder_layout(default_registry().build("dataset", config, where="synth"), Path(args.out))
    print(f"wrote {args.out}: " + ", ".join(f"{folder} {n}" for folder, n in counts.items()))
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    """Download a public CycleGAN dataset into the folder layout."""
    folder = download_dataset(args.name, Path(args.to))
    print(f"{args.name} is ready in {folder} (use data: {{name: folder, root: {folder}}})")
    return 0


def _describe(study: Study) -> str:
    variants, seeds = len(study.variant_names), len(study.spec.seeds)
    return f"{variants} variant(s) x {seeds} seed(s) = {len(study.runs)} run(s), baseline {study.baseline!r}"


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a study file completely without training anything."""
    study = load_study(args.study, default_registry())
    print(f"{args.study}: valid: {_describe(study)}")
    return 0


def _out_dir(out: str | None, study: Study) -> Path:
    """``--out``, else the study's default output folder ``runs/<study name>``."""
    return Path(out) if out else Path("runs") / study.spec.name


def cmd_plan(args: argparse.Namespace) -> int:
    """Show every run of a study with its overrides, id, steps and state on disk."""
    from unpaired.runner import run_status, steps_per_run

    registry = default_registry()
    study = load_study(args.study, registry)
    out = _out_dir(args.out, study)
    steps = steps_per_run(study, registry)
    rows = [("variant", "seed", "run id", "steps", "status", "overrides")]
    for run in study.runs:
        overrides = ", ".join(f"{k}={v}" for k, v in run.overrides.items()) or "(base)"
        count = steps[run.run_id]
        rows.append((run.variant, str(run.seed), run.run_id, str(count) if isinstance(count, int) else "?", run_status(run, out), overrides))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    for reason in dict.fromkeys(v for v in steps.values() if isinstance(v, str)):
        print(f"steps unknown: {reason}")
    print(f"\n{study.spec.name}: {_describe(study)}; output folder {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Train every pending run of a study; finished runs are skipped, interrupted ones resume."""
    from unpaired.runner import run_study, select_runs

    registry = default_registry()
    study = load_study(args.study, registry)
    out = _out_dir(args.out, study)
    runs = select_runs(study, args.only, args.seeds)
    print(f"{study.spec.name}: {_describe(study)}; {len(runs)} selected; output folder {out}", file=sys.stderr)
    summary = run_study(study, out, registry, runs, jobs=args.jobs, show_progress=not args.quiet,
                        announce=lambda line: print(line, file=sys.stderr))
    print(summary)
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of study files."""
    print(json.dumps(study_json_schema(default_registry()), indent=1))
    return 0


def _extractor(args: argparse.Namespace):
    from unpaired.engine import pick_device
    from unpaired.evaluate import FeatureExtractor, build_extractor

    config = {"name": args.extractor, **({"weights": args.weights} if args.weights else {})}
    device = pick_device(args.device)
    return FeatureExtractor(build_extractor(config, default_registry(), device), config, device, args.batch_size)


def cmd_fid(args: argparse.Namespace) -> int:
    """FID and KID between two image folders, pre-processed like test images."""
    from unpaired.evaluate import score_folders

    metrics = score_folders(Path(args.first), Path(args.second), args.size, _extractor(args))
    print(f"FID {metrics['fid']:.4f}   KID {metrics['kid']:.6f} ± {metrics['kid_std']:.6f}")
    return 0


def _run_folders(target: Path) -> list[Path]:
    """Run folders named by a run folder, a study output folder, or a study file (its default output folder)."""
    if (target / "spec.json").is_file():
        return [target]
    if target.is_file():
        target = _out_dir(None, load_study(target, default_registry()))
    index = target / "study.json"
    if not index.is_file():
        raise ValueError(f"{target} is neither a run folder (with spec.json) nor a study output folder (with study.json)")
    return [target / run["folder"] for run in json.loads(index.read_text())["runs"] if (target / run["folder"] / "result.json").is_file()]


def cmd_score(args: argparse.Namespace) -> int:
    """Score saved generators again and record the metrics."""
    from unpaired.engine import pick_device
    from unpaired.evaluate import rescore_run

    registry, device = default_registry(), pick_device(args.device)
    for folder in _run_folders(Path(args.target)):
        metrics = rescore_run(folder, registry, device, args.epoch)
        print(f"{folder}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.endswith("_std")))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Rank a study's variants by a metric over seeds, from its MLflow runs."""
    from unpaired.compare import finished_runs, plot, render, study_baseline, summarize
    from unpaired.tracking import tracking_uri

    target = Path(args.study)
    if target.suffix.lower() in (".yaml", ".yml", ".json") and target.is_file():
        study = load_study(target, default_registry())
        name, baseline, uri = study.spec.name, study.baseline, tracking_uri(study.spec.tracking.uri)
    else:
        name, uri = args.study, tracking_uri(None)
        baseline = study_baseline(name, uri)
    runs = finished_runs(name, uri)
    if runs.empty:
        raise ValueError(f"study {name!r} has no finished runs in MLflow yet")
    table = summarize(runs, args.metric, baseline)
    print(render(table, args.metric, args.format), end="")
    if args.plot:
        plot(table, runs, args.metric, Path(args.plot))
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``unpaired`` command and its subcommands."""
    parser = argparse.ArgumentParser(prog="unpaired", description="Ablation studies for unpaired image-to-image translation.")
    parser.add_argument("--version", action="version", version=f"unpaired {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list the components that installed plugins provide")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(handler=cmd_plugins)

    validate = commands.add_parser("validate", help="check a study file without training")
    validate.add_argument("study", help="study file (YAML or JSON)")
    validate.set_defaults(handler=cmd_validate)

    plan = commands.add_parser("plan", help="list a study's runs and which are done / partial / pending")
    plan.add_argument("study", help="study file (YAML or JSON)")
    plan.add_argument("--out", help="output folder (default: runs/<study name>)")
    plan.set_defaults(handler=cmd_plan)

    run = commands.add_parser("run", help="train every pending run of a study (rerun to resume)")
    run.add_argument("study", help="study file (YAML or JSON)")
    run.add_argument("--out", help="output folder (default: runs/<study name>)")
    run.add_argument("--only", nargs="+", metavar="NAME", help="only these variants")
    run.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="only these seeds")
    run.add_argument("--jobs", type=int, default=1, help="runs trained at once, as separate processes")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=cmd_run)

    compare = commands.add_parser("compare", help="rank a study's variants: mean ± std over seeds, Δ vs baseline")
    compare.add_argument("study", help="study name (MLflow experiment) or study file")
    compare.add_argument("--metric", default="fid_mean", help="metric to rank by (default fid_mean; lower is better for fid/kid/losses)")
    compare.add_argument("--format", choices=["table", "markdown", "csv", "json"], default="table")
    compare.add_argument("--plot", help="also write a bar chart with error bars and per-seed points to this PNG")
    compare.set_defaults(handler=cmd_compare)

    schema = commands.add_parser("schema", help="print the JSON Schema of study files (for editor completion)")
    schema.set_defaults(handler=cmd_schema)

    fid = commands.add_parser("fid", help="FID and KID between two image folders")
    fid.add_argument("first")
    fid.add_argument("second")
    fid.add_argument("--size", type=int, default=256, help="images are resized to SIZE x SIZE first (default 256)")
    fid.add_argument("--extractor", default="inception", help="feature extractor component (default inception)")
    fid.add_argument("--weights", help="local Inception weights file (default: $UNPAIRED_FID_WEIGHTS)")
    fid.add_argument("--batch-size", type=int, default=25)
    fid.add_argument("--device", default="auto")
    fid.set_defaults(handler=cmd_fid)

    score = commands.add_parser("score", help="score saved generators again (a run folder, a study output folder or a study file)")
    score.add_argument("target")
    score.add_argument("--epoch", type=int, help="the best epoch kept by periodic evaluation (default: the final generators)")
    score.add_argument("--device", default="auto")
    score.set_defaults(handler=cmd_score)

    train = commands.add_parser("train", help="train one variant spec (YAML/JSON); reruns resume")
    train.add_argument("spec", help="variant spec file")
    train.add_argument("--out", required=True, help="output folder: checkpoints, history, samples, generators")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=cmd_train)

    translate = commands.add_parser("translate", help="apply a trained generator to an image or a folder")
    translate.add_argument("input", help="an image file or a folder of images")
    translate.add_argument("--checkpoint", required=True, help="generators/AtoB.pt, generators/BtoA.pt or a training checkpoint")
    translate.add_argument("--direction", choices=["AtoB", "BtoA"], default="AtoB")
    translate.add_argument("--out", required=True, help="folder for the translated PNGs")
    translate.add_argument("--size", type=int, default=0, help="resize inputs to SIZE x SIZE (default: the training crop size)")
    translate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    translate.set_defaults(handler=cmd_translate)

    data = commands.add_parser("data", help="make or fetch datasets").add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data.add_parser("synth", help="write the synthetic blobs-vs-stripes dataset in the folder layout")
    synth.add_argument("out", help="folder to create (trainA, trainB, testA, testB)")
    synth.add_argument("--size", type=int, default=64)
    synth.add_argument("--n", type=int, default=200, help="training images per domain")
    synth.add_argument("--n-test", type=int, default=50, help="test images per domain")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=cmd_data_synth)
    download = data.add_parser("download", help="download a public CycleGAN dataset (resumable)")
    download.add_argument("name", choices=DATASETS, metavar="NAME", help=", ".join(DATASETS))
    download.add_argument("--to", default="datasets", help="parent folder (default: ./datasets)")
    download.set_defaults(handler=cmd_data_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unpaired`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (SpecError, ComponentError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DataError, DownloadError, ValueError, EvaluationError, TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        from unpaired.engine import TrainingError, TrainingInterrupted

        if isinstance(error, TrainingInterrupted):
            print(f"interrupted: {error}", file=sys.stderr)
            return 130
        if isinstance(error, TrainingError):
            print(f"error: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
