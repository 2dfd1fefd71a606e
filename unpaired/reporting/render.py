"""A report as one self-contained HTML page (images inline, no script, no network) or as Markdown with its PNGs."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from unpaired.plugin_api.methods import Direction
from unpaired.reporting.figures import MIN_SIDE
from unpaired.reporting.report import Report, format_value
from unpaired.results.tables import markdown_cell, markdown_table, markdown_text

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .question { font-size: 1.25em; font-style: italic; margin: 0.3em 0 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } .facts th { width: 11em; } img { max-width: 100%; height: auto; display: block; }
.figure { overflow-x: auto; margin-bottom: 1.5em; } .note { color: #a33; }
@media print { .figure { overflow: visible; } h2 { break-before: auto; } table, img { break-inside: avoid; } }
"""

Images = Callable[[str, bytes, str], str]
"""``(file stem, PNG bytes, alt text) -> markup``: embeds a picture or writes it beside the document."""


def render_html(report: Report) -> str:
    """One HTML file holding everything: images as data: URIs with their pixel size stated."""

    def image(stem: str, png: bytes, alt: str) -> str:
        width, height = Image.open(io.BytesIO(png)).size
        data = base64.b64encode(png).decode("ascii")
        return (
            f'<div class="figure"><img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
            f'alt="{html.escape(alt)}" data-name="{stem}"></div>'
        )

    title = html.escape(report.name)
    body = "\n".join(_html_blocks(report, image))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}: study report</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _html_table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


HTML_TEXT = {
    "title": "<h1>{}</h1>",
    "question": '<p class="question">{}</p>',
    "heading": "<h2>{}</h2>",
    "subheading": "<h3>{}</h3>",
    "text": "<p>{}</p>",
    "note": '<p class="note">{}</p>',
}
MARKDOWN_TEXT = {"title": "# {}", "question": "*{}*", "heading": "## {}", "subheading": "### {}", "text": "{}", "note": "{}"}


def _html_blocks(report: Report, image: Images) -> Iterator[str]:
    for kind, content in _outline(report):
        if kind in HTML_TEXT:
            yield HTML_TEXT[kind].format(html.escape(content))
        elif kind == "facts":
            yield '<table class="facts">' + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in content) + "</table>"
        elif kind == "table":
            yield _html_table(*content)
        elif kind == "image":
            yield image(*content)


def render_markdown(report: Report, folder: Path, link: str) -> str:
    """Markdown whose pictures are PNG files written into ``folder`` and linked as ``link/<name>.png``."""
    folder.mkdir(parents=True, exist_ok=True)

    def image(stem: str, png: bytes, alt: str) -> str:
        (folder / f"{stem}.png").write_bytes(png)
        return f"![{markdown_text(alt)}]({link}/{stem}.png)"

    lines = []
    for kind, content in _outline(report):
        if kind in MARKDOWN_TEXT:
            lines.append(MARKDOWN_TEXT[kind].format(markdown_text(content)))
        elif kind == "facts":
            lines.append("| | |\n|---|---|\n" + "\n".join(f"| {markdown_cell(k)} | {markdown_cell(v)} |" for k, v in content))
        elif kind == "table":
            header, rows = content
            lines.append(markdown_table(header, rows))
        elif kind == "image":
            lines.append(image(*content))
    return "\n\n".join(lines) + "\n"


def _outline(report: Report) -> Iterator[tuple[str, Any]]:
    """The report as a sequence of blocks, the same for every format."""
    yield from _opening_blocks(report)
    yield from _ranking_blocks(report)
    for heading, tables in (("Other scores", report.other_scores), ("Runs", report.runs)):
        if tables:
            yield "heading", heading
        for table in tables:
            yield "subheading", table.title
            yield "table", (table.header, table.rows)
    if report.curves is not None:
        yield "heading", "Training curves"
        png, panels = report.curves
        yield "text", f"Mean over seeds per epoch; the band spans the lowest to the highest seed. Panels: {'; '.join(panels)}."
        yield "image", ("curves", png, "training curves per variant: " + "; ".join(panels))
    yield from _comparison_blocks(report)
    yield from _closing_blocks(report)


def _opening_blocks(report: Report) -> Iterator[tuple[str, Any]]:
    """Title, question, description, facts and notes."""
    yield "title", report.name
    if report.question:
        yield "question", report.question
    if report.description:
        yield "text", report.description
    yield "facts", report.facts
    for note in report.notes:
        yield "note", note


def _ranking_blocks(report: Report) -> Iterator[tuple[str, Any]]:
    """The answer, then each ranking table (the first with the metric's plot)."""
    if report.answer:
        yield "heading", "Answer"
        for paragraph in report.answer:
            yield "text", paragraph
    for index, table in enumerate(report.ranking):
        yield "subheading", table.title
        yield "table", (table.header, table.rows)
        if index == 0 and report.metric_plot is not None:
            yield "image", ("metric", report.metric_plot, f"{table.title}: seeds as points, 95 % CI as bars")


def _closing_blocks(report: Report) -> Iterator[tuple[str, Any]]:
    """What each variant changes, then the failed and incomplete runs."""
    if report.differences:
        yield "heading", "What each variant changes"
        rows = [
            [variant, path, format_value(base), format_value(value)]
            for variant, changes in report.differences.items()
            for path, base, value in changes
        ]
        yield "table", (["variant", "field", "baseline", "variant's value"], rows)
    if report.failures or report.incomplete:
        yield "heading", "Failed and incomplete"
        for line in report.incomplete:
            yield "note", f"Incomplete: {line}"
        if report.failures:
            yield "table", (["variant", "seed", "error"], [[v, str(s), e] for v, s, e in report.failures])


def _comparison_blocks(report: Report) -> Iterator[tuple[str, Any]]:
    comparison = report.comparison
    if comparison is None:
        return
    yield "heading", "Visual comparison"
    yield (
        "text",
        (
            f"The final generators of seed {comparison.seed} of every variant on the same test images (the first "
            "column is the real input; a variant whose method translates one way only is shown in that direction); "
            "unless `unpaired report --images` chose them, the images are spread evenly over the test split, the same "
            f"in every report (`--seed` chooses the seed). Images under {MIN_SIDE} px are shown enlarged by a whole "
            "factor (nearest neighbour: no pixel invented)."
        ),
    )
    if comparison.missing:
        yield (
            "note",
            f"No final generators of seed {comparison.seed} to show (grey): {'; '.join(comparison.missing)}. `unpaired run` on the "
            "study exports a finished run's missing or damaged generators again from its last checkpoint.",
        )
    titles: dict[Direction, str] = {"AtoB": "A → B", "BtoA": "B → A"}
    for direction, title in titles.items():
        if direction not in comparison.figures:  # no variant's method translates this way
            continue
        indices = ", ".join(map(str, comparison.indices[direction]))
        yield "subheading", f"{title}: test images {indices} of {comparison.test_sizes[direction]}"
        yield "image", (f"translations-{direction}", comparison.figures[direction], f"{title} translations by every variant")
