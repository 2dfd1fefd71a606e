"""A run's progress as its user sees it: a live bar on a terminal; anywhere else (output to a log file, a worker process
of ``--jobs``) one plain line per epoch, which a log file keeps readable and runs trained at once can share without
drawing over each other."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import sys
from collections.abc import Mapping

from tqdm import tqdm

_SAID_OTHERWISE = ("epoch", "epoch_seconds", "it_per_s")  # of an epoch's record, what its line says in its own words


def draws_a_bar() -> bool:
    """Whether this process may draw a live bar: its stderr is a terminal and it is not a worker of another process
    (workers share their parent's terminal, and their bars would overwrite each other there)."""
    return sys.stderr.isatty() and multiprocessing.parent_process() is None


def duration(seconds: float) -> str:
    """``seconds`` as a person reads a time left: ``45 s``, ``12 min``, ``3 h 05 min``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def epoch_line(label: str, record: Mapping[str, float], epochs: int, steps: tuple[int, int] | None = None) -> str:
    """An epoch's ``record`` (its row of the history) of run ``label`` as one line: where the run is (of ``epochs``; and
    ``steps`` done of all, when known), its speed, the time left at that speed, and the learning rate and the epoch's mean
    losses (and its scores, when it was evaluated)."""
    speed, epoch = record["it_per_s"], int(record["epoch"])
    if steps is None:
        where, left = f"epoch {epoch}/{epochs}", (epochs - epoch) * record["epoch_seconds"]
    else:
        where, left = f"epoch {epoch}/{epochs}, step {steps[0]}/{steps[1]}", (steps[1] - steps[0]) / speed if speed > 0 else math.inf
    shown = " ".join(f"{name}={value:.3g}" for name, value in record.items() if name not in _SAID_OTHERWISE)
    return f"{label}: {where}, {speed:.1f} it/s, {duration(left)} left; {shown}"


class Progress:
    """The progress of the run ``label``: ``total`` steps, ``done`` of them before this process took it up; nothing
    when not ``shown`` (``--quiet``)."""

    def __init__(self, label: str, total: int, done: int, shown: bool):
        self.label, self.total = label, total
        bar = shown and draws_a_bar()
        self.lines = shown and not bar
        # only where it draws: a tqdm makes a multiprocessing lock, which a worker killed outright leaves behind
        self.bar = tqdm(total=total, initial=done, unit="it", dynamic_ncols=True, desc=label) if bar else None

    def step(self, losses: Mapping[str, float] | None = None) -> None:
        """One step more; ``losses`` (at logging steps) are shown beside the bar."""
        if self.bar is None:
            return
        self.bar.update()
        if losses is not None:
            self.bar.set_postfix({name: f"{value:.3g}" for name, value in losses.items()}, refresh=False)

    def epoch_end(self, epochs: int, step: int, record: Mapping[str, float]) -> None:
        """The epoch just recorded (``record``: its row of the history), as one line where there is no bar: where the run
        is, its speed, the time left at that speed, the learning rate and the epoch's mean losses (and its scores, when
        it was evaluated)."""
        if self.lines:
            with contextlib.suppress(OSError):  # a terminal gone mid-line (a hang-up, EIO) loses the line, not the run
                print(epoch_line(self.label, record, epochs, (step, self.total)), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
