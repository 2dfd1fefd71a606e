"""A study's parent MLflow run: one per study and output folder, found again by its tags by every invocation, holding
the study file, the current report and each variant's aggregates over its seeds."""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from unpaired.tracking.store import log_metrics
from unpaired.storage.files import exclusive_lock
from unpaired.storage.run_folder import RunFolder

PARENT_ROLE = "study"
"""The ``unpaired.role`` tag of a study's parent run."""
AGGREGATED = ("training_seconds",)
"""Run columns aggregated on the parent besides the scores."""
UNNAMEABLE = re.compile(r"[^\w.\- ]")
"""Characters MLflow refuses in a metric name."""
PREFIX_LENGTH = 160
"""The longest variant part of an aggregate's metric name: MLflow takes names of up to 250 characters."""


@contextlib.contextmanager
def parent_lock(out: Path) -> Iterator[None]:
    """An exclusive lock in the output folder while the parent is found or made: two invocations at once open one."""
    with exclusive_lock(Path(out) / ".mlflow-parent.lock"):
        yield


def open_parent(client: Any, experiment_id: str, study: str, out: Path, tags: dict[str, str]) -> str:
    """The parent run of ``study`` writing to ``out``: the one an earlier invocation opened (found by the folder's tag),
    reopened with this invocation's ``tags`` and its count of invocations, else a new one."""
    where = str(Path(out).resolve())
    with parent_lock(out):
        parents = client.search_runs([experiment_id], filter_string=f"tags.`unpaired.role` = '{PARENT_ROLE}'", max_results=10_000)
        found = [parent for parent in parents if parent.data.tags.get("unpaired.out") == where]  # a path is never put in a filter
        if not found:
            tags = {**tags, "unpaired.role": PARENT_ROLE, "unpaired.out": where, "unpaired.invocations": "1"}
            return str(client.create_run(experiment_id, run_name=study, tags=tags).info.run_id)
        parent = max(found, key=lambda run: run.info.start_time)
        invocations = int(parent.data.tags.get("unpaired.invocations", "1")) + 1
        for key, value in {**tags, "unpaired.invocations": str(invocations)}.items():
            client.set_tag(parent.info.run_id, key, value)
        client.update_run(parent.info.run_id, status="RUNNING")
        return str(parent.info.run_id)


def close_parent(client: Any, parent_run_id: str, out: Path, status: str) -> bool:
    """End the parent with this invocation's ``status``, unless another invocation of the study still trains a run of
    ``out`` (a live process holds a run folder's lease): then it stays RUNNING for that invocation to end, and a run
    that starts under an ended parent reopens it. Returns whether it was ended."""
    with parent_lock(out):
        if any(RunFolder(lease.parent).is_leased() for lease in Path(out).glob("*/*/lease.json")):
            return False
        client.set_terminated(parent_run_id, status)
        return True


def variant_aggregates(out: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Variant -> score (and training seconds) -> ``{"mean", "std", "n"}`` over the finished runs of the study folder
    ``out`` whose scores are finite (std: sample std, NaN with one seed)."""
    from unpaired.results.study_results import read_study_results  # pandas and scipy: a second off each worker's start

    runs = read_study_results(out).metrics()
    columns = [c for c in [*runs.attrs.get("lower_is_better", {}), *AGGREGATED] if c in runs.columns]
    aggregates: dict[str, dict[str, dict[str, float]]] = {}
    for variant, group in runs.groupby("variant", sort=False):
        for column in columns:
            values = [float(v) for v in group[column] if isinstance(v, (int, float)) and math.isfinite(v)]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else math.nan
                aggregates.setdefault(str(variant), {})[column] = {"mean": statistics.fmean(values), "std": std, "n": float(len(values))}
    return aggregates


def metric_prefixes(variants: Iterable[str]) -> dict[str, str]:
    """Each variant's part of its aggregates' metric names: its name with each character MLflow refuses in a name
    (``=``, ``,``, ``/``) as ``_``, and a leading dot too (MLflow refuses a name that reads as a path out of the run,
    ``../x``). A name that is still longer than :data:`PREFIX_LENGTH`, or that two variants would share, is cut and
    ends in a hash of the exact name, so that no variant's aggregates land under another's."""
    readable = {variant: re.sub(r"^\.", "_", UNNAMEABLE.sub("_", variant)) for variant in variants}
    shared = Counter(readable.values())
    return {
        variant: prefix
        if shared[prefix] == 1 and len(prefix) <= PREFIX_LENGTH
        else f"{prefix[: PREFIX_LENGTH - 9]}-{hashlib.sha256(variant.encode()).hexdigest()[:8]}"
        for variant, prefix in readable.items()
    }


def aggregate_metrics(aggregates: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """The aggregates as MLflow metrics, ``<variant>/<score>_mean`` (``_std``, ``_n``), the variant named as
    :func:`metric_prefixes` says: the exact names are in the parent's ``aggregates.json``."""
    prefixes = metric_prefixes(aggregates)
    return {
        f"{prefixes[variant]}/{column}_{statistic}": value
        for variant, columns in aggregates.items()
        for column, statistics in columns.items()
        for statistic, value in statistics.items()
        if not math.isnan(value)
    }


def log_aggregates(client: Any, parent_run_id: str, out: Path) -> None:
    """Log each variant's aggregates over every finished run of the folder ``out`` (this invocation's or an earlier
    one's) on the parent: as metrics, and exactly named in ``aggregates.json``."""
    aggregates = variant_aggregates(out)
    log_metrics(client, parent_run_id, aggregate_metrics(aggregates), step=0)
    client.log_dict(parent_run_id, aggregates, "aggregates.json")
