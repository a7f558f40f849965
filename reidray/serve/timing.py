"""Where a request's time went inside the service, as a standard ``Server-Timing`` response header.

Opt-in (``ServeSettings.server_timing``; off, nothing is timed or added): the benchmark reads it
to split a request's latency into hops without a profiler. ``app`` is the whole time inside the
ingress's ASGI app (from the first middleware to the response's start); ``encode`` the time the
route waited for the image's answer (queue, decode, forward pass and, for a search, the index);
``decode``, ``forward`` and ``search`` those steps over the batch the request was in, ``batch``
that batch's size. Everything outside ``app`` (client, HTTP server or Serve's proxy, the
proxy-to-replica hop) is the client's latency minus ``app``. Values are milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

SCOPE_KEY = "reidray.timing"
HEADER = b"server-timing"


class Timing:
    """The spans of one request; lives in the ASGI scope under ``SCOPE_KEY``."""

    __slots__ = ("start", "spans")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.spans: dict[str, float] = {}

    def add(self, name: str, value: float) -> None:
        self.spans[name] = self.spans.get(name, 0.0) + value

    def header(self) -> bytes:
        spans = {"app": (time.perf_counter() - self.start) * 1e3, **self.spans}
        return ", ".join(f"{name};dur={value:.3f}" for name, value in spans.items()).encode()


@contextmanager
def span(scope: dict, name: str) -> Iterator[None]:
    """Time the block as ``name`` (milliseconds) when the request is timed; otherwise do nothing."""
    timing: Timing | None = scope.get(SCOPE_KEY)
    if timing is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timing.add(name, (time.perf_counter() - start) * 1e3)


def note(scope: dict, name: str, value: float) -> None:
    """Record a value measured elsewhere (e.g. by the encoder) when the request is timed."""
    timing: Timing | None = scope.get(SCOPE_KEY)
    if timing is not None:
        timing.add(name, value)


def timed(scope: dict, send):
    """Start timing the request in ``scope``; returns a ``send`` that adds the header to the response."""
    timing = scope[SCOPE_KEY] = Timing()

    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (HEADER, timing.header())]}
        await send(message)

    return wrapped


def parse(value: str) -> dict[str, float]:
    """A ``Server-Timing`` header -> {name: dur}; entries without a duration are skipped."""
    out = {}
    for entry in value.split(","):
        name, _, rest = entry.strip().partition(";")
        for param in rest.split(";"):
            key, _, number = param.strip().partition("=")
            if key == "dur" and name:
                out[name] = float(number)
    return out
