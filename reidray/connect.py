"""Joining Ray: the one place the CLI, the flow and serve connect from."""

from __future__ import annotations

import os


def connect(address: str | None) -> None:
    """Start Ray locally, or join the cluster named by ``address`` / ``RAY_ADDRESS``."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=True)
