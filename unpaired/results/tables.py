"""The comparison as text: the answer in words and its tables, for the terminal, Markdown, LaTeX, CSV or JSON.

``unpaired compare`` prints these and the report shows the very same cells, so a number reads the same wherever it
is seen.
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import PurePath

import pandas as pd

from unpaired.columns import aligned
from unpaired.results.analysis import Analysis
from unpaired.results.scores import heading, metric_title
from unpaired.results.statistics import CONFIDENCE

FORMATS = ("table", "markdown", "latex", "csv", "json")


@dataclass
class Table:
    """A titled table of text cells."""

    title: str
    header: list[str]
    rows: list[list[str]]


def answer_tables(analysis: Analysis, runs: pd.DataFrame) -> list[Table]:
    """The ranking by the analysis' score and, for a grid, its factorial table: what ``compare`` prints before the runs."""
    metric = analysis.metric
    tables = [ranking(analysis.table, heading(runs, metric), "Ranked by " + metric_title(metric, runs))]
    return tables + ([factorial_table(analysis.factorial, metric)] if analysis.factorial is not None else [])


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def ranking(table: pd.DataFrame, heading: str, title: str) -> Table:
    """The ranked variants (:func:`unpaired.results.statistics.summarize`'s table), ``heading`` naming the score."""
    adjusted = int(table.attrs.get("comparisons", 0)) > 1
    percent = f"{CONFIDENCE * 100:.0f} %"
    interval = f"Δ vs baseline [{percent} joint CI]" if adjusted else f"Δ vs baseline [{percent} CI]"
    header = ["rank", "variant", f"{heading} mean ± std", f"{percent} CI", "seeds", interval, "p (Bonferroni)" if adjusted else "p", "verdict"]
    rows = []
    for variant, row in table.iterrows():
        mark = " (baseline)" if row["baseline"] else ""
        incomplete = "" if row["complete"] else f" (incomplete: {row['n']}/{row['planned']} seeds)"
        delta = "" if row["baseline"] or math.isnan(row["delta"]) else f"{row['delta']:+.3f}"
        if delta and not math.isnan(row["delta_ci_low"]):
            delta += f" [{row['delta_ci_low']:+.3f}, {row['delta_ci_high']:+.3f}]"
        rows.append(
            [
                str(row["rank"]),
                f"{variant}{mark}{incomplete}",
                f"{row['mean']:.3f} ± {_number(row['std'])}",
                f"[{_number(row['ci_low'])}, {_number(row['ci_high'])}]",
                str(row["n"]),
                delta,
                "" if row["baseline"] else _p(row["p_adjusted"]),
                row["verdict"],
            ]
        )
    return Table(title, header, rows)


def factorial_table(grid: pd.DataFrame, metric: str) -> Table:
    """The grid's ANOVA (:func:`unpaired.results.analysis.factorial`), one row per term."""
    rows = [
        [str(term), str(row["df"]), f"{row['F']:.2f}", _p(row["p"]), f"{row['partial_eta_sq']:.2f}", row["means"]] for term, row in grid.iterrows()
    ]
    header = ["term", "df", "F", "p", "partial η²", f"{metric} mean by level"]
    return Table(f"Factorial analysis of {metric} (type II ANOVA, {grid.attrs['df_resid']} residual df)", header, rows)


def runs_table(runs: pd.DataFrame) -> Table:
    """Every finished run: its scores per direction, epochs, training time, folder and MLflow run."""
    scores = [c for c in runs.attrs.get("lower_is_better", {}) if c in runs.columns and c.endswith(("_a2b", "_b2a"))]
    present = [c for c in ("epochs", "training_seconds", "run_folder", "mlflow_run_id") if c in runs.columns]
    rows = []
    for _, run in runs.sort_values(["variant", "seed"], key=lambda c: c.map(str) if c.name == "variant" else c).iterrows():
        cells = [str(run["variant"]), str(run["seed"]), *(_number(run[c]) for c in scores)]
        for column in present:
            value = run[column]
            cells.append("" if pd.isna(value) else (f"{value:.0f}" if column in ("epochs", "training_seconds") else str(value)))
        rows.append(cells)
    header = ["variant", "seed", *scores, *(c.replace("_", " ") for c in present)]
    return Table("Every run", header, rows)


def folder_name(path: str | PurePath) -> str:
    """A run folder as the tables name it, whatever the output folder: ``variant/seed0-<run id>``."""
    parts = PurePath(path).parts
    return "/".join(parts[-2:])


def render(analysis: Analysis, tables: list[Table], fmt: str) -> str:
    """The answer and ``tables`` as ``table`` (wrapped text and aligned columns), ``markdown``, ``latex``, ``json`` (all
    of it) or ``csv`` (the ranking alone, machine-readable)."""
    if fmt == "csv":
        return analysis.table.to_csv()
    if fmt == "json":
        factorial = None if analysis.factorial is None else json.loads(analysis.factorial.reset_index().to_json(orient="records"))
        content = {
            "metric": analysis.metric,
            "answer": analysis.answer,
            "ranking": json.loads(analysis.table.reset_index().to_json(orient="records")),
            "factorial": factorial,
            "tables": {table.title: [dict(zip(table.header, row)) for row in table.rows] for table in tables},
        }
        return json.dumps(content, indent=1, ensure_ascii=False) + "\n"
    if fmt == "markdown":
        blocks = [*map(markdown_text, analysis.answer), *(f"### {markdown_text(t.title)}\n\n" + markdown_table(t.header, t.rows) for t in tables)]
        return "\n\n".join(blocks) + "\n"
    if fmt == "latex":
        return "\n\n".join([*map(_latex, analysis.answer), *(_latex_table(t) for t in tables)]) + "\n"
    paragraphs = ["\n".join(textwrap.wrap(paragraph, 110)) for paragraph in analysis.answer]
    return "\n\n".join([*paragraphs, *(f"{t.title}\n" + "\n".join(aligned([t.header, *t.rows])) for t in tables)]) + "\n"


def markdown_text(text: str) -> str:
    """``text`` as Markdown that shows it as written: HTML's special characters as entities, so that a name such as
    ``<img src=x onerror=...>`` (a variant's, a study's question) stays text in every renderer instead of becoming markup."""
    return html.escape(text, quote=False)


def markdown_cell(text: str) -> str:
    """``text`` as a cell of a Markdown table: :func:`markdown_text` with its ``|`` escaped."""
    return markdown_text(text).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(markdown_cell, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in rows])


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}"}
LATEX_SYMBOLS = {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$", "η²": r"$\eta^2$", "α": r"$\alpha$"}
LATEX_SYMBOLS |= {"×": r"$\times$", "→": r"$\to$", "≥": r"$\geq$", "<": r"$<$", ">": r"$>$", "|": r"$|$"}
"""Characters LaTeX's text mode prints as other glyphs, in its default font encoding (``<`` as ``¡``), or cannot print."""


def _latex(text: str) -> str:
    escaped = "".join(LATEX_ESCAPES.get(character, character) for character in text)
    for symbol, command in LATEX_SYMBOLS.items():
        escaped = escaped.replace(symbol, command)
    return escaped


def _latex_table(table: Table) -> str:
    """A booktabs table (``\\usepackage{booktabs}``) with its title as the caption."""
    body = [" & ".join(map(_latex, row)) + r" \\" for row in table.rows]
    return "\n".join(
        [
            r"\begin{table}[ht]",
            r"\centering",
            rf"\caption{{{_latex(table.title)}}}",
            r"\begin{tabular}{" + "l" * len(table.header) + "}",
            r"\toprule",
            " & ".join(map(_latex, table.header)) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
        ]
    )
