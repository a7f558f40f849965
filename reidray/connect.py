"""Joining Ray: the one place the CLI, the flow and serve connect from.

reidray's one bounded wait lives here (``_wait_until``, for ``config.wait_seconds()``: the
$REIDRAY_WAIT_SECONDS knob): for a cluster to answer at an address (Ray itself retries its GCS for
minutes), and for a node that can hold an encoder actor or a score task (Ray would keep such work
pending for ever); each stops with one line naming the cause and the fix. A healthy run shows only
reidray's lines: Ray's own logs (its INFO and WARNING lines, the workers' output) appear with
``--verbose``; they are always in the session's log folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

from reidray.config import WAIT_ENV, wait_seconds
from reidray.errors import ReidrayError

_verbose = False  # what the last connect() was asked for; Ray Data's console follows it
_fixed = False  # whether the last connect() started Ray here: an instance no autoscaler ever grows
_GAVE_UP: set[frozenset] = set()  # resource shapes this process already waited for in vain


def connect(address: str | None, *, verbose: bool = False) -> None:
    """Start Ray locally, or join the cluster named by ``address`` / ``RAY_ADDRESS``."""
    import ray

    if ray.is_initialized():
        return
    global _verbose, _fixed
    _verbose = verbose
    address = check_address(address)
    _fixed = address is None
    level = logging.INFO if verbose else logging.ERROR  # Ray's start-up notices: token auth, "Started..."
    logging.getLogger("ray").setLevel(level)
    try:
        ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=verbose,
                 logging_level=level)
    except ConnectionError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ReidrayError(f"cannot join the Ray cluster at {address}: {first}; check --address or RAY_ADDRESS, "
                           "or leave both unset to run locally") from None
    logging.getLogger("ray").setLevel(level)  # ray.init sets its own


def quiet_ray_data() -> None:
    """Ray Data's console lines off, unless --verbose; its log file (ray-data.log in the session's
    log folder) keeps everything. Call after ``ray.data`` is imported (it sets its handlers)."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger)

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):  # reidray names each failed cell itself
            handler.setLevel(logging.INFO if _verbose else logging.CRITICAL)


# Lines Ray's C++ core writes straight to this process's stderr (Python logging cannot reach them)
# that are false alarms on a healthy run; the session's python-core-driver-*.log keeps each one.
# Ray Data creates every actor-pool worker with its own object references (the map transformer and
# the DataContext, put by Ray Data itself) and max_restarts=-1, so the core worker logs this once
# per process for any actor pool, whatever the UDF's arguments (ray-project/ray#53727). The
# restarts it warns about are what let a cell survive a killed encoder actor (tests/test_embed.py),
# and Ray Data holds those references for as long as the pool lives.
RAY_FALSE_ALARMS = (b"has constructor arguments in the object store and max_restarts > 0",)
_filter_lock = threading.Lock()
_filter_users = 0
_filter_state: tuple[int, threading.Thread] | None = None  # (the real stderr's fd, the forwarding thread)


@contextlib.contextmanager
def ray_false_alarms_hidden() -> Iterator[None]:
    """While the block runs, this process's stderr (fd 2) passes through a thread that forwards
    every line as it comes except Ray's known false alarms (``RAY_FALSE_ALARMS``); with --verbose,
    nothing is filtered. Nested and concurrent uses share one filter; the last one out restores
    fd 2 and waits until every line written meanwhile is forwarded."""
    global _filter_users, _filter_state
    if _verbose:
        yield
        return
    with _filter_lock:
        _filter_users += 1
        if _filter_users == 1:
            try:
                _filter_state = _start_filter()
            except OSError:  # no usable stderr (closed, or out of descriptors): nothing to keep quiet
                _filter_state = None
    try:
        yield
    finally:
        with _filter_lock:
            _filter_users -= 1
            if _filter_users == 0 and _filter_state is not None:
                _stop_filter(*_filter_state)
                _filter_state = None


def _start_filter() -> tuple[int, threading.Thread]:
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with open(read_end, "rb") as lines, open(real, "wb", closefd=False) as out:
            for line in lines:
                if not any(alarm in line for alarm in RAY_FALSE_ALARMS):
                    out.write(line)
                    out.flush()

    thread = threading.Thread(target=forward, name="ray-stderr-filter", daemon=True)
    thread.start()
    return real, thread


def _stop_filter(real: int, thread: threading.Thread) -> None:
    sys.stderr.flush()
    os.dup2(real, 2)  # the pipe's last writer gone: the thread reads what is left, then ends
    thread.join(timeout=5.0)
    if not thread.is_alive():  # else a writer we did not start still holds the pipe: keep its target
        os.close(real)


def ray_logs_hint() -> str:
    """Where Ray's own traces of a failure are, for the end of a one-line message."""
    import ray

    try:
        logs = ray._private.worker._global_node.get_logs_dir_path()  # no public API names it
    except AttributeError:
        return ""
    return f" (Ray's trace: {logs}/ray-data.log)"


def disconnect() -> None:
    """Stop this process's Ray (the local instance it started goes with it), for good: a Ray Data
    thread still running must not start a fresh instance behind our back (Ray's auto-init)."""
    import ray
    from ray._private import auto_init_hook

    auto_init_hook.enable_auto_connect = False
    ray.shutdown()


def check_address(address: str | None) -> str | None:
    """The cluster address to join (``address``, else $RAY_ADDRESS; None: start Ray locally), once
    something answers there: cheap, so commands call it before any other work."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        wait_for_cluster(address, wait_seconds())
    return address


def host_port(address: str) -> tuple[str, int] | None:
    """The TCP endpoint of a cluster address (``host:port`` or ``ray://host:port``); None for
    ``auto``, ``local`` and anything without a port, which Ray resolves itself."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def wait_for_cluster(address: str, seconds: float) -> None:
    """Return once something accepts TCP connections at ``address``; after ``seconds`` of trying,
    stop with the cause and the fix."""
    endpoint = host_port(address)
    if endpoint is None:
        return
    refused: list[OSError] = []

    def answers() -> bool:
        try:
            with socket.create_connection(endpoint, timeout=max(0.5, min(5.0, seconds))):
                return True
        except OSError as exc:
            refused.append(exc)
            return False

    if not _wait_until(answers, seconds):
        reason = refused[-1].strerror or type(refused[-1]).__name__
        raise ReidrayError(
            f"no Ray cluster answers at {address} ({reason}; tried for {seconds:g} s): start one there "
            f"(`ray start --head`), fix --address / RAY_ADDRESS, or leave both unset to run locally; "
            f"{WAIT_ENV} sets how long to wait")


def wait_for_resources(wanted: dict[str, float], *, what: str, fix: str, say: Callable[[str], None],
                       timeout_s: float | None = None) -> None:
    """Return once a live node could hold ``wanted`` (one actor's or task's resources).

    Ray would otherwise wait silently for ever ("does not have any available ..."). On a Ray
    instance this process started (it never grows) that fails at once. On a cluster it says at once
    what is missing and how to fix it, asks the autoscaler for it meanwhile (a cluster that scales
    from zero starts a node), and gives up after ``timeout_s`` (default: ``config.wait_seconds()``)
    with a ReidrayError. A shape given up on once fails at once for the rest of the run.
    """
    import ray
    from ray.autoscaler.sdk import request_resources

    wanted = {name: amount for name, amount in wanted.items() if amount > 0}
    shape = frozenset(wanted.items())
    missing = ", ".join(f"{amount:g} {name}" for name, amount in sorted(wanted.items()))
    if _fits(ray.nodes(), wanted):
        return
    if _fixed:
        raise ReidrayError(f"{what} asks for {missing} but no node has that, and the Ray this run started "
                           f"never has more; {fix}")
    if shape in _GAVE_UP:
        raise ReidrayError(f"{what}: no node has {missing}; {fix}")
    timeout_s = wait_seconds() if timeout_s is None else timeout_s
    say(f"{what} asks for {missing} but no node has that: waiting up to {timeout_s:.0f} s for the autoscaler "
        f"to add one ({fix}; {WAIT_ENV} sets how long)")
    request_resources(bundles=[wanted])
    try:
        found = _wait_until(lambda: _fits(ray.nodes(), wanted), timeout_s)
    finally:
        request_resources(bundles=[])  # Ray's own scheduling holds the node from here on
    if not found:
        _GAVE_UP.add(shape)
        raise ReidrayError(f"{what}: no node with {missing} appeared in {timeout_s:.0f} s; {fix}")


def _wait_until(ready: Callable[[], bool], seconds: float) -> bool:
    """Ask ``ready`` about once a second until it says yes (True) or ``seconds`` have passed
    (False): every bounded wait of reidray's."""
    deadline = time.monotonic() + seconds
    while not ready():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(1.0, left))
    return True


class ResourceWatch:
    """Notices, while a cell runs, that no live node can hold ``wanted`` any more (the nodes that
    could were lost): says so once, asks the autoscaler for a node, and gives up after ``timeout_s``
    (default: ``config.wait_seconds()``, the one wait knob) without one. Ray itself would keep the
    work pending for ever."""

    def __init__(self, wanted: dict[str, float], *, what: str, fix: str, say: Callable[[str], None],
                 timeout_s: float | None = None, every_s: float = 1.0) -> None:
        self.wanted = {name: amount for name, amount in wanted.items() if amount > 0}
        self.timeout_s = wait_seconds() if timeout_s is None else timeout_s
        self.what, self.fix, self.say, self.every_s = what, fix, say, every_s
        self.lost_since: float | None = None
        self.checked = float("-inf")
        self.failure: str | None = None

    def gave_up(self) -> str | None:
        """The one-line failure once no node could hold ``wanted`` for ``timeout_s``; else None.
        Cheap to call often: it asks Ray at most once per ``every_s``."""
        import ray
        from ray.autoscaler.sdk import request_resources

        now = time.monotonic()
        if self.failure or not self.wanted or now - self.checked < self.every_s:
            return self.failure
        self.checked = now
        missing = ", ".join(f"{amount:g} {name}" for name, amount in sorted(self.wanted.items()))
        if _fits(ray.nodes(), self.wanted):
            if self.lost_since is not None:
                self.say(f"{self.what}: a node with {missing} is back")
                request_resources(bundles=[])
            self.lost_since = None
        elif self.lost_since is None:
            self.lost_since = now
            self.say(f"{self.what}: no live node has {missing} any more (lost mid-cell): waiting up to "
                     f"{self.timeout_s:.0f} s for one to join ({self.fix})")
            request_resources(bundles=[self.wanted])
        elif now - self.lost_since >= self.timeout_s:
            request_resources(bundles=[])
            self.failure = (f"{self.what}: the nodes with {missing} were lost mid-cell and none joined in "
                            f"{self.timeout_s:.0f} s; {self.fix}, then rerun")
        return self.failure


def _fits(nodes: list[dict], wanted: dict[str, float]) -> bool:
    return any(node.get("Alive") and all(node["Resources"].get(name, 0) >= amount for name, amount in wanted.items())
               for node in nodes)
