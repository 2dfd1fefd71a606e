"""How much training a study has left, at the pace its runs have trained so far: what ``unpaired plan`` estimates, and
what a study trained one run after another says as each run starts (:func:`runs_left_note`).

Each run's history records the speed of each of its epochs (``it_per_s``: over the steps this process trained, so an
epoch resumed halfway counts its own steps; the steps alone, not the checkpoints, samples or scoring). A pace is seconds
per step; the steps a run has left are taken at the mean pace of its variant's trained epochs (its seeds train the same
networks on the same data), or, for a variant with none yet, at the mean pace of every trained epoch. Runs trained at
once each took longer per step than one alone would, and share the wall-clock time: the estimate is the sum of the runs'
times at the pace they had.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from unpaired.training.progress import duration


@dataclass(frozen=True)
class RunSoFar:
    """A planned run as far as it has trained: its ``steps`` and ``epochs`` in all, and its history's rows (one per epoch
    trained)."""

    variant: str
    steps: int
    epochs: int
    history: list[dict[str, float]]

    @property
    def steps_per_epoch(self) -> float:
        return self.steps / self.epochs

    @property
    def steps_left(self) -> float:
        return max(0.0, self.steps - len(self.history) * self.steps_per_epoch)


def time_left_line(runs: list[RunSoFar], unknown: int = 0) -> str | None:
    """One line for a study's ``runs`` (finished or not): the training time they have left, and what it rests on (and
    that ``unknown`` more runs, whose data cannot be opened here, are not counted); None when none has trained an epoch
    yet (nothing to go by) or none has steps left."""
    paces: dict[str, list[float]] = {}
    for run in runs:
        paces.setdefault(run.variant, []).extend(1 / row["it_per_s"] for row in run.history if row.get("it_per_s", 0) > 0)
    trained = [pace for variant in paces.values() for pace in variant]
    if not trained or not (left := [run for run in runs if run.steps_left > 0]):
        return None
    overall = sum(trained) / len(trained)
    seconds = sum(run.steps_left * _mean(paces.get(run.variant), overall) for run in left)
    guessed = sorted({run.variant for run in left if not paces.get(run.variant)})
    basis = f"at each variant's pace over the {len(trained)} epoch(s) trained so far"
    if guessed:
        basis += f" ({', '.join(guessed)}, with none yet: the mean pace)"
    summed = f"about {duration(seconds)} summed over them (runs trained at once overlap)"
    uncounted = f"; {unknown} run(s) of unknown length not counted" if unknown else ""
    return f"training left: {len(left)} run(s), {summed}, {basis}; scoring not counted{uncounted}"


def _mean(values: list[float] | None, otherwise: float) -> float:
    return sum(values) / len(values) if values else otherwise


def runs_left_note(left: int, took: Sequence[float]) -> str:
    """`` (3 runs left: about 1 h 30 min, at the 30 min each of the 2 trained so far)``: what the ``left`` runs of a study
    trained one after another would take, this one included, at the mean wall-clock time (scoring and checkpoints
    included) of those trained to the end so far, which ``took`` those seconds each; "" before any has."""
    if not took or left < 1:
        return ""
    each = sum(took) / len(took)
    return f" ({left} run(s) left: about {duration(left * each)}, at the {duration(each)} each of the {len(took)} trained so far)"
