"""Shared fixtures: one Ray instance for the whole test session (ray.init costs ~5 s)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

# Ray's token auth must be the same for every Ray command of a session; tests run without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# No model hub is reachable in tests: never try to download weights, whatever the shell says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["REIDRAY_DOWNLOAD"] = "0"


# `.ci/run` runs the tests in two processes (pytest-xdist, `--dist loadgroup`). What one machine
# holds once runs in one of them, test after test: the `cluster` tests (multi-node Ray clusters, the
# longest and busiest) and the `serve` tests (Serve's HAProxy listens on fixed stats ports, 8404 and
# 9101: one Serve per machine at a time). Every other module is one unit, so its module-scoped
# fixtures are built once. Units are handed out in collection order: the held groups first, then
# the modules with slow tests, so that no long unit starts last while the other process idles.
HELD = ("cluster", "serve")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    slow = {item.path for item in items if item.get_closest_marker("slow")}

    def held(item: pytest.Item) -> str | None:
        return next((name for name in HELD if item.get_closest_marker(name)), None)

    for item in items:
        item.add_marker(pytest.mark.xdist_group(held(item) or item.path.name))
    items.sort(key=lambda item: (HELD.index(h) if (h := held(item)) else len(HELD), item.path not in slow))


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        from reidray.serve.ingress import use_ingress

        use_ingress()  # Serve in these tests runs behind the front `reidray.run serve` gives by default
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def person_crops():
    """``make(n, seed=0)``: person-shaped (2:1), structured crops at an odd size (150x70), so
    every model really resizes: head, torso and legs blocks on dark noise, a striped torso."""

    def make(n: int, seed: int = 0) -> list[Image.Image]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            img = (rng.random((150, 70, 3)) * 80).astype(np.uint8)
            img[10:35, 20:50] = rng.integers(100, 256, 3)
            img[35:85, 10:60] = rng.integers(0, 256, 3)
            img[85:140, 15:55] = rng.integers(0, 256, 3)
            img[40:80:6, 10:60] = 255 - img[40:80:6, 10:60]
            out.append(Image.fromarray(img))
        return out

    return make
