"""Autoscaling from zero, on Ray's own fake multi-node provider: a CPU-only head whose autoscaler
may start GPU-declaring worker nodes (local processes) at ``min_workers: 0``.

The quick grid with ``embed.num_gpus: 1`` asks for a GPU no node has: reidray asks the autoscaler
for one (``wait_for_resources``), a worker node starts, the encoders run there, the grid completes,
and the idle worker is released after its idle timeout. The test records the timeline (request ->
node up -> first batch -> done -> node gone) and checks its order; docs/cluster.md shows one.

`ray.cluster_utils.AutoscalingCluster` is not used: it runs `ray stop --force`, which would kill every
Ray instance on the machine, and its example config is not in the wheel. The head here is
tests/raycluster.LocalHead (own ports, own temp dir, stopped through its own processes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from raycluster import LocalHead, ray_env
from reidray.datasets.synth import generate

ROOT = Path(__file__).resolve().parents[1]
GPU_TYPE = "reidray.gpu"
IDLE_MINUTES = 0.25  # a GPU worker idle this long is released

AUTOSCALING = {
    "cluster_name": "reidray-fake",
    "max_workers": 1,
    # Read from the provider section: no updater (nothing to set up on a local process), nodes known
    # by their ids (every node here has the same IP).
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "head_node_type": "ray.head.default",
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
        GPU_TYPE: {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 200 * 1024 * 1024},
                   "node_config": {}, "min_workers": 0, "max_workers": 1},
    },
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": IDLE_MINUTES,
    "docker": {},
    "auth": {"ssh_user": "nobody"},
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}


def gpu_nodes(head: LocalHead) -> list[str]:
    return [n["node_id"] for n in head.alive_nodes() if n["resources_total"].get("GPU")]


def monitor_log(head: LocalHead) -> str:
    """The autoscaler's own account, for a failure message."""
    path = head.temp_dir / "session_latest" / "logs" / "monitor.log"
    return path.read_text()[-3000:] if path.is_file() else "(no monitor.log)"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_gpu_worker_starts_from_zero_for_the_grid_and_is_released_when_idle(tmp_path):
    data = tmp_path / "data"
    generate(data, n_ids=30)
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"name": "quick-gpu", "datasets": ["reidray-synth"], "models": ["handcrafted"],
                               "embed": {"num_gpus": 1, "concurrency": [1, 1], "progress_seconds": 0.5}}))
    head = LocalHead(num_cpus=1, num_gpus=0, autoscaling=AUTOSCALING)
    events: dict[str, float] = {}
    try:
        head.start()
        assert gpu_nodes(head) == [], "the cluster must start with no GPU node"
        t0 = time.monotonic()
        events["request"] = 0.0
        process = subprocess.Popen(
            [sys.executable, "-m", "reidray.run", "all", "--job", str(job), "--address", head.gcs_address,
             "--data-root", str(data), "--out", str(tmp_path / "out")],
            cwd=ROOT, env={**ray_env(), "REIDRAY_WAIT_SECONDS": "240"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[tuple[float, str]] = []

        def read() -> None:
            for line in process.stdout:
                lines.append((time.monotonic() - t0, line.rstrip()))
                if "first batch" not in events and " images (" in line and ": 0/" not in line:
                    events["first batch"] = time.monotonic() - t0

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = t0 + 420
        while process.poll() is None and time.monotonic() < deadline:
            if "node up" not in events and gpu_nodes(head):
                events["node up"] = time.monotonic() - t0
            time.sleep(0.5)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        events["done"] = time.monotonic() - t0
        reader.join(10)
        log = "\n".join(f"{t:6.1f} {line}" for t, line in lines)
        assert process.returncode == 0, f"{events}\n{log[-4000:]}\n{monitor_log(head)}"
        assert "node up" in events, f"no GPU worker was started:\n{log[-3000:]}\n{monitor_log(head)}"
        assert any("waiting up to 240 s for the autoscaler" in line for _, line in lines), log[-3000:]
        results = pl.read_parquet(tmp_path / "out" / "results" / "*.parquet")
        assert (results["mAP"] > 0.3).all()
        marker = json.loads((tmp_path / "out" / "embeddings" / "handcrafted" / "reidray-synth" / "cell.json").read_text())
        assert marker["nodes"] and not set(marker["nodes"]) & {n["node_id"] for n in head.alive_nodes()
                                                               if n["is_head_node"]}
        while gpu_nodes(head) and time.monotonic() < deadline + 120:  # idle: the autoscaler releases it
            time.sleep(1)
        assert not gpu_nodes(head), f"the idle GPU worker was never released:\n{monitor_log(head)}"
        events["node gone"] = time.monotonic() - t0
    finally:
        print("timeline (s since the request):", json.dumps(events))
        head.stop()
    order = ["request", "node up", "first batch", "done", "node gone"]
    assert [events[name] for name in order] == sorted(events[name] for name in order), events
    # The worker was busy at the first batch: released no earlier than one idle timeout after it.
    assert events["node gone"] - events["first batch"] >= IDLE_MINUTES * 60, events
