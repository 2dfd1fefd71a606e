"""The ``unpaired`` command: the parser, and one error policy for every subcommand."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

import argcomplete

from unpaired import __version__
from unpaired.errors import Interrupted, StopRequested, UnpairedError, out_of_memory, print_notices_plainly
from unpaired.tools.download import DATASETS
from unpaired.signals import stop_on_signals


STUDY_OVERRIDES = "set a base field (train.epochs=5) or, with commas, add a grid axis (generator.n_blocks=6,9); values are YAML"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``unpaired`` command and its subcommands. ``run``'s executor options come from the
    installed executors, so they are added only when ``command`` is ``run``: for any other, the parser imports neither
    torch nor a plugin, and ``--help``, ``--version`` and the shell's completion answer at once."""
    parser = argparse.ArgumentParser(prog="unpaired", description="Ablation studies for unpaired image-to-image translation.")
    parser.add_argument("--version", action="version", version=f"unpaired {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")  # required, checked in _parse to name a stray option
    _add_study_commands(commands, executor_options=command == "run")
    _add_tool_commands(commands)
    return parser


def _command_word(argv: Sequence[str] | None) -> str | None:
    """The subcommand that ``argv`` (default: this process's arguments), or the line the shell asks to complete, names:
    its first word that is not an option (the command itself has options without values only)."""
    if "_ARGCOMPLETE" in os.environ:
        words = os.environ.get("COMP_LINE", "")[: int(os.environ.get("COMP_POINT", "0"))].split()[1:]
    else:
        words = list(sys.argv[1:] if argv is None else argv)
    return next((word for word in words if not word.startswith("-")), None)


def _imported(handler: str) -> Callable[[argparse.Namespace], int]:
    """The command function that ``handler`` (``module:name`` in :mod:`unpaired.cli`) names, imported now: the command
    modules import torch and the plugins, which only running a command needs."""
    module, name = handler.split(":")
    function: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(f"unpaired.cli.{module}"), name)
    return function


def _indices(text: str) -> list[int]:
    """``0,5,9`` as test image indices, each once."""
    try:
        indices = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of test image indices like 0,5,9") from None
    repeated = sorted({index for index in indices if indices.count(index) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{text!r} names test image {', '.join(map(str, repeated))} more than once")
    return indices


def _at_least_one(text: str) -> int:
    """A whole number of at least 1: a size in pixels, a batch size, a number of jobs."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _image_side(text: str) -> int:
    """An image side in pixels: a whole number from 1 to :data:`unpaired.plugin_api.data.MAX_SIDE`."""
    from unpaired.plugin_api.data import MAX_SIDE

    value = _at_least_one(text)
    if value > MAX_SIDE:
        raise argparse.ArgumentTypeError(
            f"{text!r} px is more than {MAX_SIDE}, the largest image side (each image would take {3 * value * value / 2**30:.0f} GiB)"
        )
    return value


def _device(text: str) -> str:
    """A device name a run could also take (``train.device``)."""
    from unpaired.config.spec import DEVICE_NAME

    if not re.match(DEVICE_NAME, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    return text


def _add_study_commands(commands: argparse._SubParsersAction, executor_options: bool) -> None:
    validate = commands.add_parser("validate", help="check a study file without training")
    validate.add_argument("study", help="study file (YAML or JSON)")
    validate.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=STUDY_OVERRIDES)
    validate.set_defaults(handler="study_commands:cmd_validate", command_parser=validate)

    plan = commands.add_parser("plan", help="list a study's runs and which are done / partial / pending")
    plan.add_argument("study", help="study file (YAML or JSON)")
    plan.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=STUDY_OVERRIDES)
    plan.add_argument("--out", help="output folder (default: runs/<study name>)")
    plan.add_argument("--only", nargs="+", metavar="NAME", help="only these variants")
    plan.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="only these seeds")
    plan.add_argument(
        "--jobs",
        type=_at_least_one,
        metavar="N",
        help="the --jobs you will run with: a queued CPU run whose thread count would differ from a finished seed's says so",
    )
    plan.set_defaults(handler="study_commands:cmd_plan", command_parser=plan)

    run = commands.add_parser("run", help="train every pending run of a study (rerun to resume)")
    run.add_argument("study", help="study file (YAML or JSON)")
    run.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=STUDY_OVERRIDES)
    run.add_argument("--out", help="output folder (default: runs/<study name>)")
    run.add_argument("--only", nargs="+", metavar="NAME", help="only these variants")
    run.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="only these seeds")
    run.add_argument("--quiet", action="store_true", help="no progress: no bars on a terminal, no line per epoch elsewhere")
    run.add_argument("--rerun-stale", action="store_true", help="train again the finished runs whose plugins have other versions now")
    if executor_options:
        from unpaired.cli.executor_options import add_executor_options

        add_executor_options(run)  # last: a setting named like an option above is left to the study file
    run.set_defaults(handler="study_commands:cmd_run", command_parser=run)

    compare = commands.add_parser("compare", help="rank a study's variants: mean, 95 %% CI, Δ vs baseline, Welch's test")
    compare.add_argument(
        "study",
        help="study name (MLflow experiment), study file (its MLflow runs; its output folder when tracking is off) "
        "or study output folder (its run folders)",
    )
    compare.add_argument(
        "--metric", help="score to rank by (default: the study's ranking score; each metric says which way is better, lower for losses)"
    )
    compare.add_argument(
        "--format",
        choices=["table", "markdown", "latex", "csv", "json"],
        default="table",
        help="table (text), markdown or latex (booktabs): the answer and its tables; json: all of it; csv: the ranking",
    )
    compare.add_argument("--plot", help="also write a plot of every seed and each variant's 95 %% CI to this PNG")
    compare.set_defaults(handler="study_commands:cmd_compare", command_parser=compare)

    report = commands.add_parser("report", help="write the study report: statistics, training curves, translations side by side")
    report.add_argument("study", help="study output folder, study file (its default output folder) or study name (runs/NAME)")
    report.add_argument("--out", help="report file (default: report.html, or report.md with --format markdown, in the output folder)")
    report.add_argument("--format", choices=["html", "markdown"], help="html (one self-contained file) or markdown (with a folder of PNGs)")
    report.add_argument("--metric", help="score to rank by (default: the study's ranking score: tracking.metric, else its first metric's)")
    report.add_argument("--seed", type=int, help="whose generators translate the test images (default: the study's first seed)")
    report.add_argument(
        "--images", type=_indices, help="which test images they translate, by index: 0,5,9 (default: 6 spread evenly over the test split)"
    )
    report.add_argument("--device", type=_device, default="auto", help="where the generators run: auto, cpu, cuda, cuda:N or mps")
    report.set_defaults(handler="study_commands:cmd_report", command_parser=report)

    schema = commands.add_parser("schema", help="print the JSON Schema of study files (for editor completion)")
    schema.set_defaults(handler="study_commands:cmd_schema", command_parser=schema)

    score = commands.add_parser("score", help="score saved generators again (a run folder, a study output folder or a study file)")
    score.add_argument("target", help="a run folder, a study's output folder (its finished runs) or a study file")
    score.add_argument("--epoch", type=int, help="the best epoch kept by periodic evaluation (default: the final generators)")
    score.add_argument("--device", type=_device, default="auto", help="where the generators run: auto, cpu, cuda, cuda:N or mps")
    score.set_defaults(handler="study_commands:cmd_score", command_parser=score)


def _add_tool_commands(commands: argparse._SubParsersAction) -> None:
    plugins = commands.add_parser("plugins", help="list the components that installed plugins provide")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(handler="tool_commands:cmd_plugins", command_parser=plugins)

    fid = commands.add_parser("fid", help="FID and KID between two image folders")
    fid.add_argument("first", help="a folder of images (PNG, JPEG, ...), e.g. the real test images")
    fid.add_argument("second", help="a second folder of images, e.g. translations (both are scaled to --size)")
    fid.add_argument("--size", type=_image_side, default=256, help="images are resized to SIZE x SIZE first (default 256)")
    fid.add_argument("--extractor", help="feature extractor component (default: the default one, see `unpaired plugins`)")
    fid.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a parameter of the extractor (repeatable)")
    fid.add_argument("--weights", help="the inception extractor's local weights file, i.e. --param weights=PATH (default: $UNPAIRED_FID_WEIGHTS)")
    fid.add_argument("--batch-size", type=_at_least_one, default=25, help="images per pass of the feature extractor (default 25)")
    fid.add_argument("--device", type=_device, default="auto", help="where the extractor runs: auto, cpu, cuda, cuda:N or mps")
    fid.set_defaults(handler="tool_commands:cmd_fid", command_parser=fid)

    train = commands.add_parser("train", help="train one variant spec (YAML/JSON) into a folder, never tracked in MLflow; reruns resume")
    train.add_argument("spec", help="variant spec file")
    train.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="set a field of the spec (train.epochs=5); values are YAML")
    train.add_argument("--out", required=True, help="output folder: checkpoints, history, samples, generators")
    train.add_argument("--quiet", action="store_true", help="no progress: no bar on a terminal, no line per epoch elsewhere")
    train.set_defaults(handler="tool_commands:cmd_train", command_parser=train)

    translate = commands.add_parser("translate", help="apply a trained generator to an image or a folder")
    translate.add_argument("input", help="an image file or a folder of images")
    translate.add_argument(
        "--checkpoint", required=True, help="a run folder (its final generators), generators/AtoB.pt, generators/BtoA.pt or a training checkpoint"
    )
    translate.add_argument(
        "--direction",
        choices=["AtoB", "BtoA"],
        help="which generator (default: the one the file holds; a training checkpoint or a run folder with two: required)",
    )
    translate.add_argument("--out", required=True, help="folder for the translated PNGs")
    translate.add_argument("--size", type=_image_side, help="resize inputs to SIZE x SIZE (default: the training crop size)")
    translate.add_argument(
        "--keep-aspect",
        action="store_true",
        help="keep each image's aspect ratio, SIZE px on its shorter side (default: SIZE x SIZE, as the official test.py does)",
    )
    translate.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    translate.set_defaults(handler="tool_commands:cmd_translate", command_parser=translate)

    data = commands.add_parser("data", help="make or fetch datasets").add_subparsers(dest="data_command", required=True, metavar="ACTION")
    export = data.add_parser("export", help="write a dataset component's images in the folder layout (e.g. the synthetic one)")
    export.add_argument("dataset", help="dataset component name (see `unpaired plugins`)")
    export.add_argument("out", help="folder to create (trainA, trainB, testA, testB)")
    export.add_argument("params", nargs="*", default=[], metavar="KEY=VALUE", help="the dataset's parameters, e.g. size=64 n_train=200")
    export.set_defaults(handler="tool_commands:cmd_data_export", command_parser=export)
    download = data.add_parser("download", help="download a public CycleGAN dataset (resumable)")
    download.add_argument("name", choices=DATASETS, metavar="NAME", help=", ".join(DATASETS))
    download.add_argument("--to", default="datasets", help="parent folder (default: ./datasets)")
    download.set_defaults(handler="tool_commands:cmd_data_download", command_parser=download)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments, with ``KEY=VALUE`` overrides written after the options too (``run STUDY --out X a=1``)."""
    args, extra = parser.parse_known_args(argv)
    if args.command is None:  # argparse would say only that COMMAND is missing, not what it did not recognise
        missing = "the following arguments are required: COMMAND"
        parser.error(f"unrecognized arguments: {' '.join(extra)}; a COMMAND is required" if extra else missing)
    late = [arg for arg in extra if "=" in arg and not arg.startswith("-")] if hasattr(args, "overrides") else []
    if late != extra:  # the command's own usage, and what it does not recognise; exits
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(a for a in extra if a not in late)}")
    if late:
        args.overrides = [*args.overrides, *late]
    return args


def _memory_hint(args: argparse.Namespace) -> str:
    """What of a command's options lowers the memory it needs."""
    smaller = [option for option, name in (("--size", "size"), ("--batch-size", "batch_size")) if name in vars(args)]
    elsewhere = "a device with more memory (--device)" if "device" in vars(args) else "a machine with more memory"
    return f"use a smaller {' or '.join(smaller)}, or {elsewhere}" if smaller else f"use {elsewhere}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unpaired`` console script; returns the exit code.

    Errors the user can fix (:class:`UnpairedError`) print one line and exit with their code;
    anything else is a bug and shows its traceback. SIGINT, SIGTERM and a hang-up stop the command cleanly
    (exit 130, 143 and 129), training checkpoints first.
    """
    parser = build_parser(_command_word(argv))
    argcomplete.autocomplete(parser)  # completes and exits when the shell asks (see the README), else does nothing
    args = _parse(parser, argv)
    command = _imported(args.handler)  # before the command's own signal handling: a Ctrl-C while torch loads is __main__'s
    print_notices_plainly()
    try:
        with stop_on_signals():
            return command(args)
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except StopRequested as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        return stop.exit_code
    except Interrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
        return error.exit_code
    except UnpairedError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:
        if out_of_memory(error):  # training says which of its settings to lower; a tool's images and batches did not fit
            print(f"error: out of memory: {_memory_hint(args)} ({str(error).splitlines()[0]})", file=sys.stderr)
            return 1
        traceback.print_exc()
        print("This is a bug in unpaired or in one of its plugins: please report it with the traceback above.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
