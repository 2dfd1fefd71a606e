"""The report's pictures, as PNG bytes: the metric per variant, training curves, and the visual comparison."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from unpaired.plugin_api.registry import ComponentError, Registry
from unpaired.results.compare import plot
from unpaired.results.drawing import drawable, font_path, pyplot
from unpaired.results.study_results import RunRecord, StudyResults

BOOKKEEPING = ("epoch", "lr", "epoch_seconds", "it_per_s")
"""History columns that are neither loss terms nor scores."""
PADDING = 4
LINE_HEIGHT = 13
LABEL_WIDTH = 72
MIN_SIDE = 128


def metric_plot(table: pd.DataFrame, runs: pd.DataFrame, metric: str) -> bytes:
    """Every seed as a point, each variant's mean with its 95 % CI as a bar (``unpaired compare --plot``'s figure)."""
    buffer = io.BytesIO()
    plot(table, runs, metric, buffer)
    return buffer.getvalue()


def training_curves(results: StudyResults, registry: Registry) -> tuple[bytes, list[str]] | None:
    """The PNG and its panels' titles: one panel per group of loss terms its method declares (``Method.loss_groups``; a
    term in no group on its own), titled with the methods it shows, then one per score made during training; per
    variant the mean over seeds by epoch, with a band from the lowest to the highest seed. None without histories."""
    histories = {variant: [h for h in (_history(run) for run in results.of_variant(variant)) if not h.empty] for variant in results.variants}
    panels = _panels(results, registry, histories)
    if not panels:
        return None
    with pyplot() as plt:
        png = _curves(plt, histories, panels)
    return png, [panel.title for panel in panels]


def _curves(plt: Any, histories: dict[str, list[pd.DataFrame]], panels: list[_Panel]) -> bytes:
    """The panels drawn, as PNG bytes."""
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for index, (variant, frames) in enumerate(histories.items()):
            curves = [_summed(h, panel.columns).rename(i) for i, h in enumerate(frames) if variant in panel.variants]
            curves = [curve for curve in curves if curve.notna().any()]
            if not curves:
                continue
            table = pd.concat(curves, axis=1).dropna(how="all")
            color = f"C{index % 10}"
            axis.plot(table.index, table.mean(axis=1), color=color, label=drawable(variant), marker="." if len(table) < 12 else None)
            axis.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.2, linewidth=0)
        axis.set_title(drawable(panel.title), fontsize=9)
        label_epochs(axis)
        axis.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def label_epochs(axis: Any) -> None:
    """Label a matplotlib ``axis``'s x axis with whole epochs, also when it shows one alone (a one-epoch study's curves
    were ticked 0.945, 0.960, ... 1.065)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


@dataclass
class _Panel:
    title: str
    columns: tuple[str, ...]
    variants: list[str]


def _panels(results: StudyResults, registry: Registry, histories: dict[str, list[pd.DataFrame]]) -> list[_Panel]:
    """The panels the histories have data for: each method's loss groups (a group two methods share is one panel
    naming both), then each score column scored during training."""
    losses: dict[tuple[str, tuple[str, ...]], tuple[list[str], list[str]]] = {}  # (title, columns) -> methods, variants
    scores: dict[str, list[str]] = {}
    for variant, frames in histories.items():
        present = list(dict.fromkeys(column for h in frames for column in h.columns if h[column].notna().any()))  # in order
        method, groups, terms, scored = _declared(results, registry, variant, present)
        grouped = {term for columns in groups.values() for term in columns}
        panels = [*groups.items(), *((term, (term,)) for term in terms if term not in grouped)]
        for title, columns in panels:
            if set(present).intersection(columns):
                methods, variants = losses.setdefault((title, tuple(columns)), ([], []))
                methods += [method] if method not in methods else []
                variants.append(variant)
        for column in sorted(set(present).intersection(scored)):
            scores.setdefault(column, []).append(variant)
    return [_Panel(f"{title} ({', '.join(methods)})", columns, variants) for (title, columns), (methods, variants) in losses.items()] + [
        _Panel(f"{column} during training", (column,), variants) for column, variants in scores.items()
    ]


def _declared(
    results: StudyResults, registry: Registry, variant: str, present: list[str]
) -> tuple[str, Mapping[str, tuple[str, ...]], list[str], set[str]]:
    """A variant's method, its loss groups (none when its plugin is not installed here), its loss terms and its score
    columns, as its runs recorded them (``present``: the columns its histories have)."""
    runs = results.of_variant(variant)
    spec = next((spec for run in runs if (spec := run.spec()) is not None), None) or {}
    method = str(spec.get("method", {}).get("name", "?"))
    try:
        groups = getattr(registry.get("method", method).factory, "loss_groups", {})
    except ComponentError:
        groups = {}
    finished = [run.result for run in runs if run.result is not None and run.finished]
    terms = list(dict.fromkeys(term for result in finished for term in result.final_losses))
    scored = {column for result in finished if result.scoring for column in result.scoring.lower_is_better}
    if not terms:  # nothing finished yet: every history column but the bookkeeping and the scores is a loss term
        terms = [c for c in present if c not in BOOKKEEPING and c not in scored]
    return method, groups, terms, scored


def _summed(history: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """The sum of the ``columns`` a history has, by epoch (a group's term a method variant leaves out is left out)."""
    present = [column for column in columns if column in history.columns]
    if not present:
        return pd.Series(dtype=float)
    return history.set_index("epoch")[present].sum(axis=1, min_count=len(present))


def _history(run: RunRecord) -> pd.DataFrame:
    """The run's history, its last epoch completed with the final scores where they were scored during training (the
    final generators are scored once, at the end, and their scores are in the result, not the history)."""
    history = pd.DataFrame(run.history())
    if run.result is None or not run.finished or history.empty:
        return history
    for column, final in run.result.metrics.items():
        if column in history.columns and pd.isna(history[column].iloc[-1]):
            history.loc[history.index[-1], column] = final
    return history


def _label_lines(label: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """``label`` (as :func:`drawable` writes it) broken after its commas, and within a part where it is wider than ``width`` px."""
    lines = []
    for part in drawable(label).replace(",", ",\n").splitlines():
        while part:
            cut = len(part)
            while cut > 1 and font.getlength(part[:cut]) > width:
                cut -= 1
            lines.append(part[:cut])
            part = part[cut:]
    return lines


def image_grid(columns: list[tuple[str, torch.Tensor | None]], side: int) -> bytes:
    """A PNG with one labelled column per ``(label, uint8 RGB images (N, 3, side, side))``, images in rows; a column
    whose images are None is drawn grey (its run has no generators yet). Images smaller than ``MIN_SIDE`` px are
    shown enlarged by the smallest whole factor that makes them at least that, and columns are at least ``LABEL_WIDTH``
    px wide so that labels stay readable."""
    font = ImageFont.truetype(font_path(), 11)  # the curves' font: the one drawable() knows the glyphs of
    scale = -(-MIN_SIDE // side)  # small images are enlarged (nearest neighbour: no pixel invented)
    rows, side = max(len(images) for _, images in columns if images is not None), side * scale
    cell = max(side, LABEL_WIDTH)
    labels = [_label_lines(label, font, cell) for label, _ in columns]
    label_height = max(len(lines) for lines in labels) * LINE_HEIGHT + PADDING
    width = PADDING + len(columns) * (cell + PADDING)
    height = PADDING + label_height + rows * (side + PADDING)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for index, ((_, images), lines) in enumerate(zip(columns, labels)):
        left = PADDING + index * (cell + PADDING)
        for line_index, line in enumerate(lines):
            draw.text((left, PADDING + line_index * LINE_HEIGHT), line, fill="black", font=font)
        image_left = left + (cell - side) // 2
        for row in range(rows):
            top = PADDING + label_height + row * (side + PADDING)
            if images is None or row >= len(images):
                draw.rectangle([image_left, top, image_left + side - 1, top + side - 1], fill=(200, 200, 200))
                continue
            picture = Image.fromarray(np.ascontiguousarray(images[row].permute(1, 2, 0).numpy()))
            canvas.paste(picture.resize((side, side), Image.Resampling.NEAREST), (image_left, top))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
