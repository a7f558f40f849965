"""The Serve application's arguments, and the rule that keeps it from listening openly unprotected.

The same settings come from ``python -m reidray.run serve`` (command-line options) and from a Serve
config file's ``args:`` (``serve run``, ``serve deploy``, KubeRay's ``serveConfigV2``), so both
are validated by one schema; an unknown key or a bad value stops the deploy with its name.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reidray.config import Precision, first_problem
from reidray.errors import ReidrayError

TOKEN_ENV = "REIDRAY_SERVE_TOKEN"
MB = 1 << 20
# One upload decoded costs at most 4 bytes a pixel (RGBA before the RGB copy): 12 MP is 48 MB,
# far beyond any person crop, so a burst of requests cannot take a replica's memory.
MAX_IMAGE_PIXELS = 12_000_000


class ServeSettings(BaseModel):
    """What ``build_app`` accepts as Serve application args."""

    model_config = ConfigDict(extra="forbid")
    out: str = Field(description="output root holding the stored embeddings (absolute path or URI)")
    token: str | None = Field(default=None, description=f"bearer token; default: ${TOKEN_ENV} on the replica")
    random_init: bool = Field(default=False, description="serve random-weight encoders (tests, throughput)")
    weights: dict[str, str] = Field(default_factory=dict, description="model -> explicit weights path")
    references: list[str] = Field(
        default_factory=list, description="encoders by reference served beside the registry's (timm:..., python:...)"
    )
    precision: Precision = Field(
        default="auto", description="image encoders' arithmetic; auto: the embed stage's (fp32)"
    )
    max_upload_bytes: int = Field(default=10 * MB, gt=0, description="larger bodies get 413")
    max_image_pixels: int = Field(
        default=MAX_IMAGE_PIXELS, gt=0,
        description="larger images get 413 before decoding; 12 MP keeps one decoded upload under 48 MB (RGBA)",
    )
    max_models_per_replica: int = Field(default=3, gt=0, description="encoders kept per replica (LRU)")
    max_galleries: int = Field(default=4, gt=0, description="faiss indexes kept per ingress replica (LRU)")
    max_batch_size: int = Field(default=16, gt=0)
    batch_wait_timeout_s: float = Field(
        default=0.0, ge=0, description="wait this long for a batch to fill; 0: take what queued during the last pass"
    )
    image_encoders: Literal["auto", "ingress", "embedder"] = Field(
        default="auto", description="where image encoders run; auto: in the ingress unless encoders get GPUs"
    )
    server_timing: bool = Field(
        default=False, description="add a Server-Timing header with the time per hop (benchmarks; serve.timing)"
    )
    num_gpus: float | None = Field(
        default=None, ge=0, description="per encoder replica; default: 1 if the cluster has GPUs at deploy time"
    )


def parse_settings(args: dict) -> ServeSettings:
    """Validate Serve app args; a wrong key or value is named in one line."""
    try:
        return ServeSettings.model_validate(args)
    except ValidationError as exc:
        raise ReidrayError(f"reidray serve args: {first_problem(exc)[1]}") from None


def resolve_token(settings: ServeSettings) -> str | None:
    """The configured token, else the environment's (so a Kubernetes Secret never enters a config)."""
    return clean_token(settings.token or os.environ.get(TOKEN_ENV))


def clean_token(token: str | None) -> str | None:
    """A token with its surrounding blanks dropped; an empty or blank one is no token at all."""
    return (token or "").strip() or None


def check_port(port: int) -> None:
    """Refuse a port no TCP socket can bind, before Ray or Serve start."""
    if not 1 <= port <= 65535:
        raise ReidrayError(f"port {port} is not a TCP port; pass --port between 1 and 65535 (default 8000)")


def is_loopback(host: str) -> bool:
    """True for hosts only this machine can reach: 127.0.0.0/8, ::1, localhost."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname other than localhost may resolve to any interface


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token: Serve's HTTP ingress has no auth of its own."""
    if token is None and not is_loopback(host):
        raise ReidrayError(
            f"refusing to serve on {host} without a bearer token: anyone who can reach it could query the "
            f"galleries; pass --token (or set {TOKEN_ENV}), or listen on 127.0.0.1"
        )
