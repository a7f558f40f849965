"""reidray on a multi-node Ray cluster this test owns: a CPU-only head and worker nodes that declare a
GPU (none is really there), all on loopback (tests/raycluster.py).

What a user of an autoscaling GPU cluster relies on: encoder actors go where Ray puts GPU work and
never on the head; each encoder picks its torch device from what its process can really use, so a
declared-but-absent GPU runs on the CPU instead of crashing; the cell records the nodes and the
device; a request no node can hold says so in one line within the bound and fails the cell; a
worker node killed mid-cell costs no row and changes no number while another GPU node is left, and
fails the cell in one line naming the missing resource when none is (a rerun after a node rejoins
completes it); the same for the node a score task runs on.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from raycluster import BIN, LocalHead, describe, ray_env
from reidray.config import load_job
from reidray.datasets import load
from reidray.datasets.synth import generate
from reidray.embed.actor import EncoderActor
from reidray.embed.decode import decode_resize
from reidray.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[1]
GPU_WORKER = "reidray-gpu-worker"  # the custom resource naming the worker nodes' type


SLOW = "python:slow_encoder:build"  # tests/slow_encoder.py: long enough a cell to kill a node during it
DATASET = "reidray-synth"
# A killed node is declared dead after ~3 missed 1 s health checks, not Ray's default 30 s.
NODE_DEATH_FAST = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}


class Cluster:
    """The module's head and its GPU-declaring workers, each named by a custom resource of its own
    (``worker-<i>``), so that a test can kill the node Ray put an encoder on."""

    def __init__(self) -> None:
        self.head = LocalHead(num_cpus=1, num_gpus=0, resources={"reidray-head": 1}, system_config=NODE_DEATH_FAST)
        self.workers: dict[str, subprocess.Popen] = {}

    def add_worker(self) -> str:
        name = f"worker-{len(self.workers)}"
        self.workers[name] = self.head.add_worker(num_cpus=1, num_gpus=1, resources={GPU_WORKER: 1, name: 1})
        return name

    def live_workers(self) -> list[str]:
        return [name for name, process in self.workers.items() if process.poll() is None]

    def kill(self, name: str) -> None:
        self.head.kill(self.workers[name])

    def keep(self, n: int) -> None:
        """Exactly ``n`` live GPU workers: the newest killed, or new ones added."""
        while len(self.live_workers()) > n:
            self.kill(self.live_workers()[-1])
        while len(self.live_workers()) < n:
            self.add_worker()

    def state(self, kind: str, **equal: str) -> list[dict]:
        """Ray's state API: the ``kind`` ("actors", "tasks") whose fields equal ``equal``."""
        filters = "".join(f"&filter_keys={k}&filter_predicates=%3D&filter_values={v}" for k, v in equal.items())
        with urllib.request.urlopen(f"{self.head.address}/api/v0/{kind}?detail=true&limit=1000{filters}",
                                    timeout=10) as answer:
            return json.load(answer)["data"]["result"]["result"]

    def worker_of(self, node_ids: set[str]) -> str | None:
        """The name of a live worker node among ``node_ids``, or None."""
        for node in self.head.alive_nodes():
            if node["node_id"] in node_ids:
                return next(r for r in node["resources_total"] if r.startswith("worker-"))
        return None

    def encoder_worker(self) -> str | None:
        """The name of a worker node an encoder actor is alive on now, or None."""
        return self.worker_of({a["node_id"] for a in self.state("actors", state="ALIVE")
                               if "EncoderActor" in a["class_name"]})

    def score_worker(self) -> str | None:
        """The name of the worker node a score task is running on now, or None."""
        return self.worker_of({t["node_id"] for t in self.state("tasks", name="score_task", state="RUNNING")})


@pytest.fixture(scope="module")
def cluster():
    """The module's cluster; stopping it leaves none of its processes running (checked)."""
    nodes = Cluster()
    try:
        nodes.head.start()
        for _ in range(2):
            nodes.add_worker()
        yield nodes
        processes = nodes.head.ours()
    finally:
        nodes.head.stop()
    assert nodes.head.process is not None and nodes.head.process.poll() is not None, "ray start is still running"
    survivors = nodes.head.alive(processes) | nodes.head.ours()
    assert not survivors, f"processes of the test's head survived its stop: {describe(survivors)}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate(root, n_ids=30)
    return root


def command(head: LocalHead, out: Path, data: Path, job: dict, model: str = "handcrafted",
            stage: str = "all") -> list[str]:
    """The CLI as a user runs it against the cluster (`--address`)."""
    job_file = out.parent / f"{out.name}-{stage}-job.yaml"
    job_file.write_text(json.dumps(job))
    return [sys.executable, "-m", "reidray.run", stage, "--job", str(job_file), "--address", head.gcs_address,
            "--data-root", str(data), "--out", str(out), "-m", model, "-d", DATASET]


def run(head: LocalHead, out: Path, data: Path, job: dict, timeout: float = 600,
        model: str = "handcrafted", wait_s: int | None = None, stage: str = "all") -> subprocess.CompletedProcess:
    """The CLI against the cluster, as its own process, to the end (``wait_s``: REIDRAY_WAIT_SECONDS)."""
    env = {**ray_env(), **({"REIDRAY_WAIT_SECONDS": str(wait_s)} if wait_s is not None else {})}
    return subprocess.run(command(head, out, data, job, model, stage), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_encoders_run_on_the_gpu_workers_only_and_the_cell_says_where(cluster, data, tmp_path):
    out = tmp_path / "out"
    done = run(cluster.head, out, data, {"embed": {"num_gpus": 1, "concurrency": [1, 2], "batch_size": 64}})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    nodes = cluster.head.alive_nodes()
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
    done = run(cluster.head, out, data, {"embed": {"num_gpus": 4}}, timeout=120, wait_s=5)
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stdout + done.stderr
    waiting = [line for line in done.stdout.splitlines() if "asks for 4 GPU but no node has that" in line]
    assert len(waiting) == 1 and "embed.num_gpus" in waiting[0], done.stdout
    assert "FAILED cell handcrafted/reidray-synth: each encoder actor: no node with 4 GPU appeared in 5 s" in done.stdout
    assert "does not have any available" not in done.stdout + done.stderr  # Ray's endless warning never came
    assert not (out / "embeddings" / "handcrafted" / "reidray-synth" / "cell.json").exists()
    assert elapsed < 90, elapsed



# --- node loss ---------------------------------------------------------------------------------------

SLOW_JOB = {"embed": {"num_gpus": 1, "concurrency": [1, 2], "batch_size": 8, "decode_batch_size": 8,
                      "progress_seconds": 0.5}, "score": {}}
LOST_WAIT_S = 10  # REIDRAY_WAIT_SECONDS of the node-loss runs: how long a lost GPU node may take to come back


@pytest.fixture(scope="module")
def clean(data) -> dict[str, np.ndarray]:
    """The slow encoder's embedding of every image, computed here in one batch by the same actor class
    the pool runs: what any run, however interrupted, must store."""
    manifest = load(DATASET, data).to_pydict()
    batch = {k: np.asarray(v) for k, v in manifest.items()}
    batch["pixels"] = decode_resize(batch, SLOW)["pixels"]
    table = EncoderActor(SLOW, None, False, device="cpu")(batch)
    return dict(zip(table.column("image_id").to_pylist(), table.column("embedding").to_numpy(zero_copy_only=False)))


def assert_exact(out: Path, clean: dict[str, np.ndarray]) -> None:
    """One row per manifest image, each embedding equal to the clean run's, bit for bit."""
    table = Store.open(str(out)).read_cell(SLOW, DATASET)
    ids = table.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(clean), (len(ids), len(set(ids)), len(clean))
    got = dict(zip(ids, table.column("embedding").to_numpy(zero_copy_only=False)))
    assert got.keys() == clean.keys()
    assert all(np.array_equal(got[k], clean[k]) for k in clean)


def last_line(lines: list[str]) -> str:
    return lines[-1].strip() if lines else "(nothing printed yet)"


def run_killing(cluster: Cluster, args: list[str], pick: Callable[[Cluster], str | None],
                ready: Callable[[list[str]], str | None] = last_line) -> tuple[subprocess.CompletedProcess, str]:
    """The CLI ``args``; once ``ready(lines printed so far)`` gives a line (not None), the worker
    ``pick(cluster)`` names (polled until it names one) is killed. Returns the run and that line."""
    process = subprocess.Popen(args, cwd=ROOT, env={**ray_env(), "REIDRAY_WAIT_SECONDS": str(LOST_WAIT_S)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    errors: list[str] = []
    readers = [threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True),
               threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    at_kill, deadline = "", time.monotonic() + 300
    try:
        while process.poll() is None and time.monotonic() < deadline and not at_kill:
            time.sleep(0.3)
            line = ready(list(lines))
            victim = pick(cluster) if line is not None else None
            if victim:
                cluster.kill(victim)
                at_kill = line
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        process.kill()
    for reader in readers:
        reader.join(10)
    assert at_kill, f"no worker was killed mid-run:\n{''.join(lines)[-3000:]}"
    return subprocess.CompletedProcess(process.args, process.returncode, "".join(lines), "".join(errors)), at_kill


def embedding(lines: list[str]) -> str | None:
    """The slow cell's last progress line once it has reported embedded images."""
    progress = [line.strip() for line in lines if " images (" in line]
    return progress[-1] if progress and ": 0/" not in progress[-1] else None


def run_killing_mid_embed(cluster: Cluster, out: Path, data: Path,
                          pick: Callable[[Cluster], str | None]) -> subprocess.CompletedProcess:
    """The CLI with the slow encoder, the worker ``pick`` names killed while the cell is embedded."""
    done, at_kill = run_killing(cluster, command(cluster.head, out, data, SLOW_JOB, SLOW), pick, embedding)
    assert "(100%)" not in at_kill, f"the node was killed after the cell was embedded: {at_kill}"
    return done


def test_a_worker_killed_mid_cell_costs_no_row_while_another_gpu_node_is_left(cluster, data, clean, tmp_path):
    assert len(cluster.live_workers()) == 2
    out = tmp_path / "out"
    done = run_killing_mid_embed(cluster, out, data, Cluster.encoder_worker)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert len(cluster.live_workers()) == 1
    marker = json.loads(next((out / "embeddings").glob(f"*/{DATASET}/cell.json")).read_text())
    assert marker["n_images"] == len(clean)
    assert_exact(out, clean)
    assert pl.read_parquet(out / "results" / "*.parquet")["mAP"].item() > 0


def test_the_last_gpu_node_killed_mid_cell_fails_it_in_one_line_and_a_rerun_completes_it(cluster, data, clean,
                                                                                         tmp_path):
    cluster.keep(1)  # one GPU node left (the test above killed the other)
    out = tmp_path / "out"
    done = run_killing_mid_embed(cluster, out, data, lambda c: c.live_workers()[0])
    log = done.stdout + done.stderr
    assert done.returncode == 1, log[-4000:]
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, log[-4000:]
    assert failed[0].startswith(f"FAILED cell {SLOW}/{DATASET}: each encoder actor: the nodes with 1 GPU were lost "
                                f"mid-cell and none joined in {LOST_WAIT_S} s;"), failed
    assert "embed.num_gpus" in failed[0] and "rerun" in failed[0]
    assert not list((out / "embeddings").glob(f"*/{DATASET}/cell.json"))

    cluster.add_worker()  # a node rejoins; the same command completes the cell
    again = run(cluster.head, out, data, SLOW_JOB, model=SLOW)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert_exact(out, clean)


# --- a score task's node lost ------------------------------------------------------------------------

# Ranking on the GPU workers, k-reciprocal re-ranking with k1 150 of ~1k images: seconds of work per
# task, time to kill its node while it runs.
SCORE_JOB = {"score": {"num_gpus": 1, "rerank": {"k1": 150}}}
RESULTS = Path("results") / f"handcrafted__{DATASET}.parquet"


@pytest.fixture(scope="module")
def scored(cluster, tmp_path_factory) -> tuple[Path, Path]:
    """(data root, output root) of a grid embedded and scored once on the cluster, undisturbed: its
    results are what a rescoring, however interrupted, must store."""
    root = tmp_path_factory.mktemp("scoring")
    data, out = root / "data", root / "out"
    generate(data, n_ids=100)
    if not cluster.live_workers():
        cluster.add_worker()
    done = run(cluster.head, out, data, SCORE_JOB)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return data, out


def numbers(out: Path) -> pl.DataFrame:
    """The stored results less what differs between two scorings of the same embeddings (timing)."""
    return pl.read_parquet(out / RESULTS).drop("score_seconds", "created_at").sort("postprocess")


def rescore_killing_its_node(cluster: Cluster, scored: tuple[Path, Path], tmp_path: Path) -> tuple[
        subprocess.CompletedProcess, Path]:
    """`score` on a copy of the scored grid, the node its score task runs on killed mid-task."""
    data, clean = scored
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    done, _ = run_killing(cluster, command(cluster.head, out, data, SCORE_JOB, stage="score"), Cluster.score_worker)
    return done, out


def test_a_score_tasks_node_killed_mid_task_is_rerun_elsewhere_to_the_same_numbers(cluster, scored, tmp_path):
    cluster.keep(2)
    done, out = rescore_killing_its_node(cluster, scored, tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert len(cluster.live_workers()) == 1
    attempts = cluster.state("tasks", name="score_task", state="FINISHED")
    assert any(task["attempt_number"] > 0 for task in attempts), attempts  # Ray reran it: the kill came mid-task
    assert numbers(out).equals(numbers(scored[1]))


def test_the_last_gpu_node_killed_mid_score_fails_the_cell_in_one_line_and_a_rerun_scores_it(cluster, scored,
                                                                                            tmp_path):
    cluster.keep(1)
    done, out = rescore_killing_its_node(cluster, scored, tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 1, log[-4000:]
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert failed == [f"FAILED cell handcrafted/{DATASET}: each score task: the nodes with 1 CPU, 1 GPU were lost "
                      f"mid-cell and none joined in {LOST_WAIT_S} s; add a node with them (a GPU worker group) or "
                      "lower score.num_gpus in the job file, then rerun"], log[-4000:]
    assert "does not have any available" not in log
    assert not (out / RESULTS).exists()  # the old numbers do not outlive a failed rescoring

    cluster.add_worker()  # a node rejoins; the same command scores the cell
    again = run(cluster.head, out, scored[0], SCORE_JOB, stage="score")
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert numbers(out).equals(numbers(scored[1]))


# --- a path a node cannot read -------------------------------------------------------------------------

def test_an_image_a_node_cannot_read_fails_the_cell_naming_the_node_and_the_path(cluster, tmp_path):
    """The driver parsed the dataset and saw every file; the node that decodes one cannot read it (here:
    removed right after parsing, as an unmounted or stale data root looks to that node)."""
    data = tmp_path / "data"
    generate(data, n_ids=30)
    victim = Path(load(DATASET, data).column("path")[-1].as_py())  # decoded last: removed before it is read
    out = tmp_path / "out"
    job = {"embed": {"num_gpus": 1, "batch_size": 8, "decode_batch_size": 8}}
    process = subprocess.Popen(command(cluster.head, out, data, job), cwd=ROOT, env=ray_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(f"dataset {DATASET}:"):  # parsed: every path was readable on the driver's machine
            victim.unlink()
            break
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    log = "".join(lines) + stdout + stderr
    assert process.returncode == 1, log[-4000:]
    failed = [line for line in log.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, log[-4000:]
    assert failed[0].startswith(f"FAILED cell handcrafted/{DATASET}: image {victim} does not exist"), failed
    nodes = {node["node_id"] for node in cluster.head.alive_nodes()}
    named = failed[0].split("; read on node ", 1)[1]  # "<ip> (host <name>, node id <id>)"
    assert f"(host {socket.gethostname()}, node id " in named and named.split("node id ")[1].rstrip(")") in nodes
    assert "Traceback" not in log
    assert not list((out / "embeddings").glob(f"*/{DATASET}/cell.json"))


# --- the Jobs API on this cluster ----------------------------------------------------------------------

def test_the_quick_grid_submitted_through_the_jobs_api_runs_on_the_gpu_workers(cluster, tmp_path):
    """`ray job submit` to the multi-node head, as on a real cluster: the job's driver runs on the head,
    the encoders on a GPU-declaring worker (quick.yaml leaves embed.num_gpus to the cluster: it has GPUs)."""
    if not cluster.live_workers():
        cluster.add_worker()
    out = tmp_path / "out"  # absolute: the driver runs in Ray's copy of the working dir
    submitted = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.head.address,
         "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml",
         "--", "python", "-m", "reidray.run", "all", "--job", "jobs/quick.yaml", "--out", str(out)],
        cwd=ROOT, env=ray_env(), capture_output=True, text=True, timeout=400,
    )
    log = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0 and "succeeded" in log, log[-4000:]

    # The job ran the code uploaded from this checkout, without the local environment or outputs.
    packages = cluster.head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files"
    package = next(p for p in packages.glob("_ray_pkg_*") if p.is_dir())
    assert (package / "reidray" / "run.py").is_file() and (package / "jobs" / "quick.yaml").is_file()
    for excluded in (".venv", "out", "data", ".git"):
        assert not (package / excluded).exists(), f"{excluded}/ was uploaded with the working dir"

    # Results on disk, where --out said, readable with Polars.
    results = pl.read_parquet(out / "results" / "*.parquet")
    job = load_job(ROOT / "jobs" / "quick.yaml")
    assert set(zip(results["model"], results["dataset"])) == {(m.name, d) for m in job.models for d in job.datasets}
    assert set(results["postprocess"]) == {"none", "rerank", "aqe"} and (results["mAP"] > 0.3).all()
    assert (out / "report" / "results.md").is_file()
    workers = {n["node_id"] for n in cluster.head.alive_nodes() if n["resources_total"].get(GPU_WORKER)}
    marker = json.loads((out / "embeddings" / "handcrafted" / DATASET / "cell.json").read_text())
    assert marker["nodes"] and set(marker["nodes"]) <= workers, (marker["nodes"], workers)
