"""A lease on a folder: whoever holds it is the one process working there.

The lease is a small JSON file created atomically (``O_CREAT | O_EXCL``, atomic on local and
NFS file systems) naming its holder: host, pid, when that process started (where the system says)
and a random token. While held, a thread of the holding process refreshes its heartbeat (the file's
modification time) every few seconds. A lease is *stale* when its holder is gone: on the same host
as soon as no process with its pid and start runs (a pid alone is reused: by a container restarted
under the same hostname, whose first process is pid 1 again); from another host when its heartbeat is
older than the timeout. A stale lease is taken over, one taker at a time.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from unpaired.errors import InputError, Notice, UnpairedError

TIMEOUT_ENV = "UNPAIRED_LEASE_TIMEOUT"
DEFAULT_TIMEOUT = 120.0
"""Seconds without a heartbeat after which a lease held from another host is considered abandoned."""
WRITE_GRACE = 2.0
"""Seconds a lease file may be unreadable because its holder is writing it (a few bytes, right after creating it):
one unreadable for longer is corrupt, and is taken over."""
TAKEOVER_GRACE = 10.0
"""Seconds a takeover marker may stand (a takeover takes milliseconds): one older is a dead taker's, and is removed."""


class LeaseUnusable(UnpairedError):
    """The lease's path holds something that is not a lease file (a directory of its name): nobody can take it."""


class LeaseHeld(UnpairedError):
    """Another live process holds the lease; ``holder`` says who (host, pid)."""

    def __init__(self, path: Path, holder: dict[str, Any]):
        self.path, self.holder = path, holder
        self.who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "a process whose lease file was being written"
        """Who holds it, for people."""
        super().__init__(f"{path.parent} is being worked on by {self.who}")

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (worker -> study)
        return type(self), (self.path, self.holder)


SHORTEST_TIMEOUT = 2.0
"""The shortest lease timeout allowed: four of the most frequent heartbeats (every 0.5 s). With a shorter one (or a
negative one) another host would take over leases whose holders still train."""


def lease_timeout() -> float:
    """Seconds without a heartbeat after which another host's lease is taken over ($UNPAIRED_LEASE_TIMEOUT); a value
    that is not a number of seconds of at least :data:`SHORTEST_TIMEOUT` raises :class:`InputError`."""
    text = os.environ.get(TIMEOUT_ENV) or ""
    try:
        seconds = float(text) if text.strip() else DEFAULT_TIMEOUT
    except ValueError:
        seconds = math.nan
    if not SHORTEST_TIMEOUT <= seconds < math.inf:
        raise InputError(
            f"{TIMEOUT_ENV} is {text!r}: give the seconds without a heartbeat after which another host's lease is taken "
            f"over, at least {SHORTEST_TIMEOUT:g} (default {DEFAULT_TIMEOUT:g}), or unset it"
        )
    return seconds


def heartbeat_interval() -> float:
    """Seconds between a holder's heartbeats."""
    return max(0.5, min(10.0, lease_timeout() / 6))


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as ``<boot id>:<clock ticks since boot>`` (Linux's /proc); None where the system does
    not say, or no such process runs. A pid and its start name one process: pids are reused, starts are not."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return f"{boot}:{fields[19]}"  # field 22 of stat, counted after the command name (field 2) ends


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the process a lease (or marker) on this host names still runs: its pid, and its start when recorded."""
    started = holder.get("started")
    return process_alive(holder["pid"]) and (not isinstance(started, str) or process_start(holder["pid"]) in (started, None))


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


class Lease:
    """The lease at ``path``, held from :meth:`acquire` (or ``with``) until :meth:`release`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": process_start(os.getpid()),
            "token": secrets.token_hex(8),
            "since": time.time(),
        }
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def read_holder(self) -> dict[str, Any] | None:
        """Who holds the lease now: ``{"host", "pid", "started", "token", "since"}``; None when nobody does, or the file does
        not name a holder (being written this instant, or corrupt)."""
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        valid = isinstance(holder, dict) and isinstance(holder.get("host"), str) and isinstance(holder.get("pid"), int)
        return holder if valid else None

    def silence(self) -> float | None:
        """Seconds since the holder's last heartbeat; None when nobody holds the lease."""
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def is_stale(self, holder: dict[str, Any] | None) -> bool:
        """True when ``holder`` (read from the file) can no longer be working: its process is gone, or the file names nobody
        and has not been written for :data:`WRITE_GRACE` seconds (corrupt)."""
        silent = self.silence()
        if silent is None:
            return True
        if holder is None:
            return silent > WRITE_GRACE
        if holder["host"] == self.holder["host"]:
            return not holder_alive(holder)
        return silent > lease_timeout()

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lease, taking over a stale one; raise :class:`LeaseHeld` when a live process has it.

        ``wait``: seconds to keep trying while it is held (a retry of work whose first attempt died on
        another host waits for that holder's heartbeat to stop).
        """
        if self.path.is_dir():
            raise LeaseUnusable(f"{self.path} is a directory, where the run's lease file goes: nobody can hold the run. Move it away, then run again")
        deadline = time.monotonic() + wait
        while True:
            for _ in range(3):  # a lease released or taken over between our steps: look again
                if self._create():
                    self._start_heartbeat()
                    return
                holder = self.read_holder()
                if not self.is_stale(holder):
                    break
                if holder is None and self.path.is_file():
                    warnings.warn(f"{self.path} is corrupt (it names no holder); it is taken over", Notice, stacklevel=2)
                self._take_over(holder)
            if time.monotonic() >= deadline:
                raise LeaseHeld(self.path, self.read_holder() or {})
            time.sleep(1.0)

    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as file:
            json.dump(self.holder, file)
        return True

    def _take_over(self, stale: dict[str, Any] | None) -> None:
        """Remove a stale lease, unless another taker got there first (one taker at a time, by an exclusive marker)."""
        marker = self.path.with_name(self.path.name + ".takeover")
        try:
            handle = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if self._abandoned(marker):  # a taker that died while taking over
                marker.unlink(missing_ok=True)
            return
        with os.fdopen(handle, "w") as file:
            json.dump(self.holder, file)
        try:
            # still the stale one we looked at (an unreadable one must still be stale: not a new lease being written)
            if self.read_holder() == stale and (stale is not None or self.is_stale(None)):
                self.path.unlink(missing_ok=True)
        finally:
            marker.unlink(missing_ok=True)

    def _abandoned(self, marker: Path) -> bool:
        """Whether a takeover marker is a dead taker's: its process (on this host) is gone, or it stands for longer than a
        takeover takes (:data:`TAKEOVER_GRACE`)."""
        try:
            age = time.time() - marker.stat().st_mtime
        except FileNotFoundError:
            return False
        try:
            taker = json.loads(marker.read_text())
        except (OSError, ValueError):  # being written this instant, or gone: only its age tells
            taker = None
        if age > TAKEOVER_GRACE:
            return True
        here = isinstance(taker, dict) and taker.get("host") == self.holder["host"] and isinstance(taker.get("pid"), int)
        return here and not holder_alive(taker)

    def _start_heartbeat(self) -> None:
        interval = heartbeat_interval()
        self._stop.clear()
        self._beating = threading.Thread(target=self._beat, args=(interval,), daemon=True, name=f"lease {self.path}")
        self._beating.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
            self._beating = None
        if self.read_holder() == self.holder:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
