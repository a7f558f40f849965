"""The path users take on clusters, end to end: a real Ray head, a real `ray job submit`.

`ray start --head` on loopback, `ray job submit --working-dir . -- python -m reidray.run all --job
jobs/quick.yaml`, results on disk, the head stopped. The head is this test's alone: its own ports,
its own temp dir, stopped by signalling its own processes (found through /proc: Linux, as CI).
`ray stop` would also kill the test session's Ray instance (tests/conftest.py) and anyone else's
on the machine, so it is never used.

Also here: every job file in jobs/ validates, and the paper grid is the study's 11 x 9.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
import yaml

from reidray.config import load_job
from reidray.errors import ReidrayError

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # ray and python of the environment running the tests
RUNTIME_ENV = ROOT / "cluster" / "runtime_env.yaml"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on loopback now (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def ray_env() -> dict[str, str]:
    """The environment of every Ray command here: one auth mode for all (ray.md), no stray address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE", "disabled")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this one
    return env


class LocalHead:
    """A Ray head on loopback that only this test owns, started and stopped through its own processes."""

    def __init__(self) -> None:
        # Short: Ray's unix socket paths under it must stay below 108 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rrhead-", dir="/tmp"))
        (gcs, self.dashboard_port, client, agent_http, agent_grpc, env_agent, metrics, node_manager,
         object_manager) = free_ports(9)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = self.temp_dir / "ray-start.log"
        self.command = [
            str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
            "--port", str(gcs), "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
            "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
            "--metrics-export-port", str(metrics), "--node-manager-port", str(node_manager),
            "--object-manager-port", str(object_manager),
            "--num-cpus", "2", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--disable-usage-stats", "--temp-dir", str(self.temp_dir),
        ]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        # --block keeps `ray start` in the foreground as the parent of the head's processes; on
        # SIGTERM it stops exactly those. Its own session keeps our signals away from pytest.
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, cwd=self.temp_dir, env=ray_env(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ray start exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            # The job API lives in a dashboard module process that comes up after the dashboard
            # itself answers: wait until it lists jobs, or the submission can be dropped.
            try:
                with urllib.request.urlopen(f"{self.address}/api/jobs/", timeout=5) as answer:
                    if isinstance(json.load(answer), list):
                        return
            except (OSError, ValueError):  # not listening yet, or not answering JSON yet
                pass
            time.sleep(1)
        raise AssertionError(f"the head's dashboard did not answer in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def ours(self) -> set[tuple[int, int]]:
        """This head's live processes as (pid, start time): those whose command or environment names
        its temp dir, `ray start` itself, and all their descendants (workers, agents, the job's driver)."""
        marker = str(self.temp_dir).encode()
        parent, started, roots = {}, {}, set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parent[pid], started[pid] = int(stat[1]), int(stat[19])
                if marker in (entry / "cmdline").read_bytes() or marker in (entry / "environ").read_bytes():
                    roots.add(pid)
            except (OSError, IndexError, ValueError):  # gone meanwhile, or not ours to read
                continue
        if self.process is not None and self.process.poll() is None:
            roots.add(self.process.pid)
        found, frontier = set(), roots - {os.getpid()}
        while frontier:
            found |= frontier
            frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        return {(pid, started[pid]) for pid in found if pid in started}

    def stop(self) -> None:
        before = self.ours()  # snapshot first: orphans lose their parent link once the head is gone
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # `ray start --block` then stops its processes
            try:
                self.process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        left = self.alive(before) | self.ours()  # whatever the graceful stop left behind
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.alive(left) and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    @staticmethod
    def alive(processes: set[tuple[int, int]]) -> set[tuple[int, int]]:
        """Those still running as the same process (same start time: a reused pid is not ours;
        a zombie has exited and only waits for its parent to collect it)."""
        still = set()
        for pid, start in processes:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] != "Z" and int(fields[19]) == start:
                    still.add((pid, start))
            except (OSError, IndexError, ValueError):
                continue
        return still


@pytest.mark.slow
@pytest.mark.timeout(480)  # the bounds below: head 120 s, job 240 s, stop 55 s
def test_ray_job_submit_to_a_real_head_runs_the_quick_grid(tmp_path):
    out = tmp_path / "out"  # absolute: the driver runs in Ray's copy of the working dir
    head = LocalHead()
    try:
        head.start()
        processes = head.ours()
        submitted = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", head.address,
             "--working-dir", ".", "--runtime-env", str(RUNTIME_ENV.relative_to(ROOT)),
             "--", "python", "-m", "reidray.run", "all", "--job", "jobs/quick.yaml", "--out", str(out)],
            cwd=ROOT, env=ray_env(), capture_output=True, text=True, timeout=240,
        )
        log = submitted.stdout + submitted.stderr
        assert submitted.returncode == 0, log[-6000:]
        assert "succeeded" in log, log[-3000:]

        # The job ran the code uploaded from this checkout, without the local environment or outputs.
        packages = list((head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files").glob("_ray_pkg_*"))
        package = next(p for p in packages if p.is_dir())
        assert (package / "reidray" / "run.py").is_file() and (package / "jobs" / "quick.yaml").is_file()
        for excluded in (".venv", "out", "data", ".git"):
            assert not (package / excluded).exists(), f"{excluded}/ was uploaded with the working dir"

        # Results on disk, where --out said, readable with Polars.
        results = pl.read_parquet(out / "results" / "*.parquet")
        job = load_job(ROOT / "jobs" / "quick.yaml")
        cells = set(zip(results["model"], results["dataset"]))
        assert cells == {(m.name, d) for m in job.models for d in job.datasets}, cells
        assert results["mAP"].is_between(0, 1).all() and (results["mAP"] > 0).all()
        assert (out / "report" / "results.md").is_file()
        for model, dataset in cells:
            assert (out / "embeddings" / model / dataset / "cell.json").is_file()
    finally:
        head.stop()
    assert head.process is not None and head.process.poll() is not None, "ray start is still running"
    survivors = head.alive(processes) | head.ours()
    assert not survivors, f"processes of the test's head survived its stop: {describe(survivors)}"


def describe(processes: set[tuple[int, int]]) -> list[str]:
    """Their pids and command lines, for a failure message."""
    lines = []
    for pid, _ in sorted(processes):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            lines.append(f"{pid}: {command[:200]}")
        except OSError:
            lines.append(f"{pid}: (gone)")
    return lines


# --- a relative --out under `ray job submit` ---------------------------------------------------------

def test_a_root_inside_a_submitted_jobs_working_dir_copy_is_warned_about(tmp_path, monkeypatch):
    """What Ray 2.60's job supervisor gives the driver (checked against a real head): its cwd is the
    unpacked working dir, and RAY_JOB_CONFIG_JSON_ENV_VAR holds the runtime env and submission id."""
    from typer.testing import CliRunner

    from reidray.run import app
    from reidray.store import RAY_JOB_ENV, Store, job_copy_warning

    copy = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv(RAY_JOB_ENV, json.dumps({
        "runtime_env": {"working_dir": "gcs://_ray_pkg_0123abcd.zip"},
        "metadata": {"job_submission_id": "raysubmit_XYZ", "job_name": "raysubmit_XYZ"}}))

    result = CliRunner().invoke(app, ["report", "--out", "out"])  # no results: fails after the warning
    warning = result.stderr.split("\n")[0]
    assert warning.startswith(f"warning: output root {copy / 'out'} lies in Ray's temporary copy"), result.stderr
    assert "raysubmit_XYZ" in warning and "absolute path" in warning and "s3://" in warning and "gs://" in warning

    shared = tmp_path / "shared"  # an absolute root outside the copy, or any URI: where the user meant
    assert job_copy_warning(Store.open(str(shared))) is None
    assert job_copy_warning(Store.open((tmp_path / "uri").as_uri())) is None
    monkeypatch.setenv(RAY_JOB_ENV, json.dumps({"runtime_env": {}, "metadata": {}}))  # no --working-dir
    assert job_copy_warning(Store.open("out")) is None
    monkeypatch.delenv(RAY_JOB_ENV)  # a driver started by hand
    assert job_copy_warning(Store.open("out")) is None


# --- the job files ----------------------------------------------------------------------------------

JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_job_file_validates_and_names_registered_models_and_datasets(path):
    from reidray import datasets, models

    job = load_job(path)
    assert job.models and job.datasets, f"{path.name} names no grid"
    for entry in job.models:
        models.get(entry.name)  # UnknownNameError lists the valid names
    for name in job.datasets:
        datasets.get(name)
    assert set(job.dataset_options) <= set(job.datasets), "options for a dataset outside the grid"


def test_the_paper_grid_is_the_studys_eleven_models_by_nine_datasets_on_gpus():
    from reidray import models

    job = load_job(ROOT / "jobs" / "paper.yaml")
    names = [m.name for m in job.models]
    assert len(names) == len(set(names)) == 11
    assert all(models.get(n).paradigm != "control" and n != "handcrafted" for n in names)
    assert job.datasets == ["market1501", "dukemtmcreid", "msmt17", "cuhk03", "grid", "celebreid", "pku", "last",
                            "iust"]
    assert job.dataset_options["cuhk03"] == {"variant": "detected"}  # what the study states it used
    # A cluster that scales from zero shows the driver no GPU at start: the request must be explicit.
    assert job.embed.num_gpus == 1 and job.embed.concurrency[0] >= 1
    assert job.data_root and job.data_root.startswith("/")


def test_a_wrong_job_file_is_rejected_with_its_line_and_reason(tmp_path):
    text = yaml.safe_dump(yaml.safe_load((ROOT / "jobs" / "paper.yaml").read_text()), sort_keys=False)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("embed:")) + 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("\n".join([*lines[:at], "  num_gpu: 1", *lines[at:]]) + "\n")  # a typo'd key
    with pytest.raises(ReidrayError) as caught:
        load_job(bad)
    assert f"line {at + 1}" in str(caught.value) and "num_gpu" in str(caught.value), caught.value
