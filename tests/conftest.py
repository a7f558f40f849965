"""Shared fixtures: one Ray instance for the whole test session (ray.init costs ~5 s)."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

# Ray's token auth must be the same for every Ray command of a session; tests run without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# No model hub is reachable in tests: never try to download weights, whatever the shell says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["REIDRAY_DOWNLOAD"] = "0"


# `.ci/run` runs the test files in two processes (pytest-xdist, `--dist loadfile`: a file's tests
# stay together, so its module fixtures are built once). Files go out in collection order, which
# puts those with the most slow tests first: no long file should start last while the other
# process idles.
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" in os.environ:
        slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
        items.sort(key=lambda item: -slow[item.path])


# Serve's HAProxy listens on fixed stats and metrics ports (8404, 9101; its fallback proxy on 8500)
# whatever Serve's own port: two Serves on one machine collide there. Each test process gives every
# Ray it starts (its session's, and those of the commands it runs) ports of its own.
if "PYTEST_XDIST_WORKER" in os.environ:
    from benchmarks.bench_serve import free_ports

    for _name, _port in zip(("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                             "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"), free_ports(3)):
        os.environ.setdefault(_name, str(_port))


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
