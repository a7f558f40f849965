"""One writer per cell: a lease file a run claims before it clears or writes a cell.

``<root>/leases/<model>__<dataset>.json`` holds who works on the cell: host, pid, when it
started and when it last said it was alive, and a token of its own. Runs claim cells one at a
time, so two runs on one output root share a grid: each embeds the cells the other does not hold
and comes back to the busy ones once they are released (by then complete, so only scored).

A lease is stale, and taken over, when its process is gone (same host, pid not alive) or when it
has not been renewed for ``STALE_SECONDS`` (the holder renews it every ``RENEW_SECONDS`` while it
works, so a long cell keeps its lease; a holder on another host is judged by renewal alone).

Claiming is atomic on local roots (and shared POSIX filesystems): an exclusive create, which only
one process can win; a stale lease is first renamed away, which also only one process can do.
Object stores: pyarrow offers no conditional PUT, so a claim there is write-then-read-back: two
runs that claim one cell within the same second may both believe they hold it. Start concurrent
runs on an object-store root a few seconds apart, or give them different cells (-m/-d).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import pyarrow.fs as pafs

from reidray.errors import CellError
from reidray.store import Store

RENEW_SECONDS = 30.0
STALE_SECONDS = 300.0
POLL_SECONDS = 2.0


class CellBusyError(CellError):
    """Another live run holds the cell's lease; the message says who."""


def lease_path(store: Store, model: str, dataset: str) -> str:
    return store.path("leases", f"{model}__{dataset}.json")


def _now() -> float:
    return time.time()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def holder_line(lease: dict) -> str:
    started = datetime.fromtimestamp(lease.get("started", 0), timezone.utc).strftime("%H:%M:%S UTC")
    return f"held by pid {lease.get('pid')} on {lease.get('host')} since {started}"


def is_stale(lease: dict) -> bool:
    """Whether the lease's holder is gone: dead pid on this host, or silent for STALE_SECONDS."""
    if _now() - float(lease.get("renewed", 0)) > STALE_SECONDS:
        return True
    return lease.get("host") == socket.gethostname() and not _alive(int(lease.get("pid", -1)))


class Lease:
    """A claim on one cell, renewed in a background thread until released."""

    def __init__(self, store: Store, model: str, dataset: str) -> None:
        self.store, self.path = store, lease_path(store, model, dataset)
        self.cell = f"{model}/{dataset}"
        self.token = uuid.uuid4().hex
        self.started = _now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                           "renewed": _now(), "token": self.token}).encode()

    def _read(self) -> dict | None:
        try:
            return json.loads(self.store.read_bytes(self.path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # half-written by a writer that died: judged by its age
            info = self.store.fs.get_file_info(self.path)
            if info.type == pafs.FileType.NotFound:
                return None
            age = info.mtime.timestamp() if info.mtime else 0.0
            return {"host": "?", "pid": -1, "started": age, "renewed": age}

    def try_claim(self) -> dict | None:
        """Claim the cell; None when it is ours, else the live holder's lease."""
        self.store.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        held = self._read()
        if held is not None:
            if not is_stale(held):
                return held
            if not self._take_over():
                return self._read() or held
        if isinstance(self.store.fs, pafs.LocalFileSystem):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return self._read() or {"host": "?", "pid": "?", "started": _now()}
            with os.fdopen(fd, "wb") as out:
                out.write(self._payload())
                out.flush()
                os.fsync(out.fileno())
        else:
            self.store.write_bytes(self.path, self._payload())
            held = self._read()
            if held is None or held.get("token") != self.token:
                return held or {"host": "?", "pid": "?", "started": _now()}
        self._thread = threading.Thread(target=self._renew, name=f"lease {self.cell}", daemon=True)
        self._thread.start()
        return None

    def _take_over(self) -> bool:
        """Move a stale lease away; False when another run moved it first."""
        if not isinstance(self.store.fs, pafs.LocalFileSystem):
            self.store.delete(self.path)
            return True
        try:
            os.replace(self.path, f"{self.path}.stale-{self.token}")
        except FileNotFoundError:
            return False
        os.unlink(f"{self.path}.stale-{self.token}")
        return True

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            held = self._read()
            if held is None or held.get("token") != self.token:
                return  # taken over (we were judged gone): never overwrite the new holder's lease
            self.store.write_bytes(self.path, self._payload())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = self._read()
        if held is not None and held.get("token") == self.token:
            self.store.delete(self.path)


@contextmanager
def cell_lease(store: Store, model: str, dataset: str, *, wait: bool,
               say: Callable[[str], None]) -> Iterator[Lease]:
    """Hold the cell's lease for the block. Busy cells: CellBusyError, or with ``wait`` poll
    (saying once who holds it) until the holder releases it or is found gone."""
    lease = Lease(store, model, dataset)
    held = lease.try_claim()
    if held is not None and not wait:
        raise CellBusyError(f"cell {model}/{dataset}: busy, {holder_line(held)} (another run on this output root)")
    if held is not None:
        say(f"embed {model}/{dataset}: waiting for the run that holds it ({holder_line(held)})")
    while held is not None:
        time.sleep(POLL_SECONDS)
        held = lease.try_claim()
    try:
        yield lease
    finally:
        lease.release()
