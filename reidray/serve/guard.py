"""What every request passes before a route runs: the bearer token and the body size limit.

Serve's HTTP ingress has neither (ray.md: no authentication, a 50 MB body accepted), so the app
enforces both, as one ASGI middleware in front of FastAPI: nothing an unauthenticated or
oversized request sends reaches a route, the docs pages included. Only ``/healthz`` is open, for
load balancers and Kubernetes probes. Being first, it also starts the opt-in ``Server-Timing``
header (``timing``), so the header's ``app`` span covers these checks too.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from fastapi import HTTPException

from reidray.serve.timing import timed

OPEN_PATHS = frozenset({"/healthz"})


@dataclass(frozen=True)
class Policy:
    """The limits the middleware applies; set on ``app.state.policy`` by the ingress replica."""

    token: str | None
    max_upload_bytes: int
    server_timing: bool = False


def token_matches(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def too_large(limit: int, size: int | None = None) -> str:
    said = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
    return f"request body of {said} exceeds the limit of {limit:,} bytes; send a smaller image"


class Guard:
    """Pure ASGI middleware: 401 without the token, 413 past the size limit (declared or streamed)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy: Policy | None = getattr(scope["app"].state, "policy", None)
        if policy is None:
            await _reply(send, 503, "the service is starting; retry shortly")
            return
        if policy.server_timing:
            send = timed(scope, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if policy.token is not None and path not in OPEN_PATHS:
            if not token_matches(headers.get("authorization"), policy.token):
                await _reply(send, 401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                             [(b"www-authenticate", b"Bearer")])
                return
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _reply(send, 400, f"Content-Length {declared!r} is not a byte count")
                return
            if int(declared) > policy.max_upload_bytes:
                await _reply(send, 413, too_large(policy.max_upload_bytes, int(declared)))
                return
        await self.app(scope, _counting(receive, policy.max_upload_bytes), send)


def _counting(receive, limit: int):
    """A ``receive`` that stops a body (chunked, or lying about its length) once it passes ``limit``."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, too_large(limit))  # FastAPI turns it into the response
        return message

    return wrapped


async def _reply(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
