"""The report's pictures, as PNG bytes: the metric per variant, training curves, and the visual comparison."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from unpaired.results.compare import plot
from unpaired.results.study_results import RunRecord, StudyResults

CURVES = {  # panel title -> the history columns summed into it
    "cycle (A + B)": ("cycle_A", "cycle_B"),
    "adversarial, generators (A + B)": ("G_adv_A", "G_adv_B"),
    "discriminators (A + B)": ("D_A", "D_B"),
    "FID (mean of both directions)": ("fid_mean",),
}
PADDING, LINE_HEIGHT, LABEL_WIDTH, MIN_SIDE = 4, 13, 72, 128


def metric_plot(table: pd.DataFrame, runs: pd.DataFrame, metric: str) -> bytes:
    """Every seed as a point, each variant's mean with its 95 % CI as a bar (``unpaired compare --plot``'s figure)."""
    buffer = io.BytesIO()
    plot(table, runs, metric, buffer)
    return buffer.getvalue()


def training_curves(results: StudyResults) -> bytes | None:
    """One panel per loss group (and FID when scored during training): per variant the mean over seeds by epoch,
    with a band from the lowest to the highest seed. None when no run has a history yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    histories = {variant: [_history(run) for run in results.of_variant(variant)] for variant in results.variants}
    histories = {variant: [h for h in frames if not h.empty] for variant, frames in histories.items()}
    panels = [
        (title, columns)
        for title, columns in CURVES.items()
        if any(set(columns) <= set(h.columns) and h[list(columns)].notna().any().all() for frames in histories.values() for h in frames)
    ]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for axis, (title, columns) in zip(axes[0], panels):
        for index, (variant, frames) in enumerate(histories.items()):
            curves = [
                h.set_index("epoch")[list(columns)].sum(axis=1, min_count=len(columns)).rename(i)
                for i, h in enumerate(frames)
                if set(columns) <= set(h.columns)
            ]
            if not curves:
                continue
            table = pd.concat(curves, axis=1).dropna(how="all")
            color = f"C{index % 10}"
            axis.plot(table.index, table.mean(axis=1), color=color, label=variant, marker="." if len(table) < 12 else None)
            axis.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.2, linewidth=0)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _history(run: RunRecord) -> pd.DataFrame:
    """The run's history, its last epoch completed with the final FID when it was scored during training (the
    final generators are scored once, at the end, and their score is in the result, not the history)."""
    history = pd.DataFrame(run.history())
    final = run.result.metrics.get("fid_mean") if run.result is not None and run.finished else None
    if final is not None and "fid_mean" in history.columns and not history.empty and pd.isna(history["fid_mean"].iloc[-1]):
        history.loc[history.index[-1], "fid_mean"] = final
    return history


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _label_lines(label: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """``label`` broken after its commas, and within a part where it is wider than ``width`` px."""
    lines = []
    for part in label.replace(",", ",\n").splitlines():
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
    font, scale = _font(), -(-MIN_SIDE // side)  # small images are enlarged (nearest neighbour: no pixel invented)
    rows, side = max(len(images) for _, images in columns if images is not None), side * scale
    cell = max(side, LABEL_WIDTH)
    labels = [_label_lines(label, font, cell) for label, _ in columns]
    label_height = max(len(lines) for lines in labels) * LINE_HEIGHT + PADDING
    width, height = PADDING + len(columns) * (cell + PADDING), PADDING + label_height + rows * (side + PADDING)
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
