"""The study report: one page that answers a study's question from its output folder.

:func:`write_report` renders it (HTML or Markdown); :class:`ReportWriter` writes the HTML one when
``unpaired run`` ends. Everything is read from the run folders, so a report needs neither the study
file nor MLflow.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from unpaired import hookimpl
from unpaired.errors import Notice
from unpaired.plugin_api.registry import Registry
from unpaired.reporting.render import render_html, render_markdown
from unpaired.reporting.report import build_report
from unpaired.storage.files import atomic_write_text
from unpaired.results.study_folder import report_path
from unpaired.results.study_results import read_as_planned_now, read_study_results
from unpaired.signals import stop_requested


def write_report(
    out: Path,
    registry: Registry,
    target: Path | None = None,
    fmt: str = "html",
    metric: str | None = None,
    seed: int | None = None,
    device: torch.device | None = None,
    images: list[int] | None = None,
    as_planned_now: bool = True,
) -> Path:
    """Write the report of the study whose output folder is ``out`` to ``target`` (default: ``report.html`` or
    ``report.md`` in ``out``; Markdown's PNGs go into ``<target stem>_files/`` beside it). Returns ``target``.
    ``seed`` and ``images``: whose generators translate which test images (see :func:`build_report`).
    ``as_planned_now``: the study recorded in ``study.json`` is planned again with the installed plugins, and runs of
    configurations it no longer plans are left out (False: the index is taken as it is, just written by a run)."""
    target = Path(target) if target is not None else report_path(out, fmt)
    results = read_as_planned_now(out, registry) if as_planned_now else read_study_results(out)
    report = build_report(results, registry, metric, seed, device, images)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "markdown":
        folder = target.with_name(f"{target.stem}_files")
        atomic_write_text(target, render_markdown(report, folder, folder.name))
    else:
        atomic_write_text(target, render_html(report))
    return target


class ReportWriter:
    """A listener that writes the study's HTML report when ``unpaired run`` ends, before other listeners hear
    of the end (so that a tracker can attach it); not when a signal stopped the study, nor when it trained
    nothing and a report is there already."""

    def __init__(self, registry: Registry, metric: str | None):
        self.registry, self.metric = registry, metric

    @hookimpl(tryfirst=True)
    def unpaired_on_study_end(self, study: Any, out: Path, summary: Any) -> None:
        if summary.stopped_by is not None or summary.aborted or stop_requested():
            return
        if not (summary.done or summary.failed) and report_path(out).is_file():
            return
        try:
            path = write_report(out, self.registry, metric=self.metric, as_planned_now=False)  # this run just wrote the index
        except Exception as error:  # the runs are done and recorded: a report that cannot be drawn must not hide that
            warnings.warn(
                f"the study report could not be written ({type(error).__name__}: {error}); `unpaired report {out}` tries again", Notice, stacklevel=2
            )
            return
        print(f"report: {path}", file=sys.stderr)
