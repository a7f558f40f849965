"""Joining Ray: the one place the CLI, the flow and serve connect from."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from reidray.errors import ReidrayError

_GAVE_UP: set[frozenset] = set()  # resource shapes this process already waited for in vain


def connect(address: str | None) -> None:
    """Start Ray locally, or join the cluster named by ``address`` / ``RAY_ADDRESS``."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=True)


def wait_for_resources(wanted: dict[str, float], *, what: str, fix: str, timeout_s: float,
                       say: Callable[[str], None]) -> None:
    """Return once a live node could hold ``wanted`` (one actor's or task's resources).

    Ray would otherwise wait silently for ever ("does not have any available ..."). Says at once
    what is missing and how to fix it; meanwhile asks the autoscaler for it (a cluster that scales
    from zero starts a node), and gives up after ``timeout_s`` with a ReidrayError. A shape given
    up on once fails at once for the rest of the run.
    """
    import ray
    from ray.autoscaler.sdk import request_resources

    wanted = {name: amount for name, amount in wanted.items() if amount > 0}
    shape = frozenset(wanted.items())
    missing = ", ".join(f"{amount:g} {name}" for name, amount in sorted(wanted.items()))
    if _fits(ray.nodes(), wanted):
        return
    if shape in _GAVE_UP:
        raise ReidrayError(f"{what}: no node has {missing}; {fix}")
    say(f"{what} asks for {missing} but no node has that: waiting up to {timeout_s:.0f} s for the autoscaler "
        f"to add one ({fix})")
    request_resources(bundles=[wanted])
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(1.0)
            if _fits(ray.nodes(), wanted):
                return
    finally:
        request_resources(bundles=[])  # Ray's own scheduling holds the node from here on
    _GAVE_UP.add(shape)
    raise ReidrayError(f"{what}: no node with {missing} appeared in {timeout_s:.0f} s; {fix}")


def _fits(nodes: list[dict], wanted: dict[str, float]) -> bool:
    return any(node.get("Alive") and all(node["Resources"].get(name, 0) >= amount for name, amount in wanted.items())
               for node in nodes)
