"""The visual comparison: the same test images translated by every variant's final generators, side by side."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from unpaired.errors import UsageError
from unpaired.plugin_api.data import to_uint8
from unpaired.plugin_api.registry import Registry
from unpaired.reporting.figures import image_grid
from unpaired.storage.files import CorruptFileError
from unpaired.plugin_api.methods import DIRECTIONS, SOURCE_DOMAIN, Direction
from unpaired.storage.records import ExportedGenerator
from unpaired.results.study_results import RunRecord, StudyResults
from unpaired.signals import stop_requested
from unpaired.training.samples import showcase_inputs, translate


@dataclass
class VisualComparison:
    """Per direction, a PNG: a column of real test inputs, then one column per variant."""

    seed: int
    indices: dict[Direction, list[int]]
    """The test images shown, by index in the source domain's test split."""
    test_sizes: dict[Direction, int]
    figures: dict[Direction, bytes] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    """Why a variant's column is grey: its run with ``seed`` has no (readable) final generators."""


def visual_comparison(
    results: StudyResults, registry: Registry, seed: int, device: torch.device, images: list[int] | None = None
) -> VisualComparison | None:
    """The showcase images of the baseline's dataset (the first variant's when the baseline has not started), or its
    test images ``images`` (by index, in each direction's source domain), translated by the final generators of each
    variant's run with ``seed``: as the run saved them when it ended, else by its generators rebuilt here. None when
    no run has started."""
    order = [results.baseline, *results.variants] if results.baseline else results.variants
    spec = next((s for v in order for run in results.of_variant(v) if (s := run.spec())), None)
    if spec is None:
        return None
    data = registry.resolve("dataset", spec["data"], where="data").build()
    sizes = {direction: data.size("test", source) for direction, source in SOURCE_DOMAIN.items()}
    if images and not all(0 <= index < min(sizes.values()) for index in images):
        available = ", ".join(f"{SOURCE_DOMAIN[d]} has {n}" for d, n in sizes.items())
        raise UsageError(f"--images {','.join(map(str, images))}: no such test image ({available}: indices from 0)")
    inputs = {direction: showcase_inputs(data, direction, images or None) for direction in DIRECTIONS}
    comparison = VisualComparison(seed, {d: indices for d, (indices, _) in inputs.items()}, sizes)
    runs = {variant: next((r for r in results.of_variant(variant) if r.seed == seed and r.finished), None) for variant in results.variants}
    directions = {variant: _directions(run) for variant, run in runs.items() if run is not None}  # its showcase read once
    for direction, (indices, shown) in inputs.items():
        columns: list[tuple[str, torch.Tensor | None]] = [(f"input ({SOURCE_DOMAIN[direction]})", to_uint8(shown))]
        translating = {variant: run for variant, run in runs.items() if run is None or direction in directions[variant]}
        if not translating:
            continue  # no variant's method translates this way (CUT: A to B only)
        for variant, run in translating.items():
            translated, why = None, "not finished"
            if run is not None:
                try:
                    translated, why = _translated(run, registry, direction, indices, shown, device)
                except CorruptFileError as error:
                    why = str(error)
            if translated is None and f"{variant} ({why})" not in comparison.missing:
                comparison.missing.append(f"{variant} ({why})")
            columns.append((variant, translated))
        comparison.figures[direction] = image_grid(columns, shown.shape[-1])
    return comparison


def _translated(
    run: RunRecord, registry: Registry, direction: Direction, indices: list[int], images: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor | None, str]:
    """The run's translations of ``images`` as uint8: those it saved when they match its generator, else computed
    (unless a stop signal arrived: rebuilding generators may take a while). None, and why, when there are none."""
    folder = run.folder
    saved = (folder.read_showcase() or {}).get(direction)
    if saved and saved["indices"] == indices and saved["generator"] == folder.generator_stamp(direction):
        return saved["images"], ""
    if not folder.generator_path(direction).is_file():
        return None, "no generators"
    if stop_requested():
        return None, "not translated: a stop was requested"
    generator = ExportedGenerator.read(folder.generator_path(direction), direction).build(registry).to(device)
    return translate(generator, images, device), ""


def _directions(run: RunRecord) -> set[str]:
    """The directions a finished run's method translates: those of its showcase, else those it has generators for."""
    showcase = run.folder.read_showcase()
    if showcase:
        return set(showcase)
    return {direction for direction in DIRECTIONS if run.folder.generator_path(direction).is_file()}
