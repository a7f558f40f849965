"""reidray on a multi-node Ray cluster this test owns: a CPU-only head and worker nodes that declare a
GPU (none is really there), all on loopback (tests/raycluster.py).

What a user of an autoscaling GPU cluster relies on: encoder actors go where Ray puts GPU work and
never on the head; each encoder picks its torch device from what its process can really use, so a
declared-but-absent GPU runs on the CPU instead of crashing; the cell records the nodes and the
device; a request no node can hold says so in one line within the bound and fails the cell.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from raycluster import LocalHead, ray_env
from reidray.datasets.synth import generate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[1]
GPU_WORKER = "reidray-gpu-worker"  # the custom resource naming the worker nodes' type


@pytest.fixture(scope="module")
def cluster():
    head = LocalHead(num_cpus=1, num_gpus=0, resources={"reidray-head": 1})
    try:
        head.start()
        for _ in range(2):
            head.add_worker(num_cpus=1, num_gpus=1, resources={GPU_WORKER: 1})
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate(root, n_ids=30)
    return root


def run(head: LocalHead, out: Path, data: Path, job: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI as a user runs it against the cluster (`--address`), as its own process."""
    job_file = out.parent / f"{out.name}-job.yaml"
    job_file.write_text(json.dumps(job))
    return subprocess.run(
        [sys.executable, "-m", "reidray.run", "all", "--job", str(job_file), "--address", head.gcs_address,
         "--data-root", str(data), "--out", str(out), "-m", "handcrafted", "-d", "reidray-synth"],
        cwd=ROOT, env=ray_env(), capture_output=True, text=True, timeout=timeout,
    )


def test_encoders_run_on_the_gpu_workers_only_and_the_cell_says_where(cluster, data, tmp_path):
    out = tmp_path / "out"
    done = run(cluster, out, data, {"embed": {"num_gpus": 1, "concurrency": [1, 2], "batch_size": 64}})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    nodes = cluster.alive_nodes()
    head = {n["node_id"] for n in nodes if n["is_head_node"]}
    workers = {n["node_id"] for n in nodes if n["resources_total"].get(GPU_WORKER)}
    assert len(head) == 1 and len(workers) == 2
    marker = json.loads((out / "embeddings" / "handcrafted" / "reidray-synth" / "cell.json").read_text())
    assert marker["nodes"] and set(marker["nodes"]) <= workers, (marker["nodes"], workers)
    assert not set(marker["nodes"]) & head
    assert marker["device"] == "cpu"  # a GPU declared to Ray but absent: the encoder ran on the CPU
    results = pl.read_parquet(out / "results" / "*.parquet")
    assert results["mAP"].item() > 0.3


def test_a_gpu_no_node_has_fails_the_cell_in_one_line_within_the_bound(cluster, data, tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    done = run(cluster, out, data, {"embed": {"num_gpus": 4, "resource_wait_s": 5}}, timeout=120)
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stdout + done.stderr
    waiting = [line for line in done.stdout.splitlines() if "asks for 4 GPU but no node has that" in line]
    assert len(waiting) == 1 and "embed.num_gpus" in waiting[0], done.stdout
    assert "FAILED cell handcrafted/reidray-synth: each encoder actor: no node with 4 GPU appeared in 5 s" in done.stdout
    assert "does not have any available" not in done.stdout + done.stderr  # Ray's endless warning never came
    assert not (out / "embeddings" / "handcrafted" / "reidray-synth" / "cell.json").exists()
    assert elapsed < 90, elapsed

