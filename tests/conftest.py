"""Shared fixtures: one Ray instance for the whole test session (ray.init costs ~5 s)."""

from __future__ import annotations

import os

import pytest

# Ray's token auth must be the same for every Ray command of a session; tests run without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# No model hub is reachable in tests: never try to download weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("REIDRAY_DOWNLOAD", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
