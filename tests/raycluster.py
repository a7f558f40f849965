"""Ray nodes that a test owns: a head and worker nodes on loopback, each `ray start --block` in its own
process group, with its own ports and temp dir, stopped (or killed, for node-loss tests) by signalling
exactly its processes (found through /proc: Linux, as CI). `ray stop` would also kill the test
session's Ray instance (tests/conftest.py) and anyone else's on the machine, so it is never used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.bench_serve import free_ports

BIN = Path(sys.executable).parent  # ray and python of the environment running the tests
TESTS = Path(__file__).resolve().parent  # on every node's PYTHONPATH: test-only encoders (slow_encoder.py)


def ray_env() -> dict[str, str]:
    """The environment of every Ray command here: one auth mode for all (ray.md), no stray address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE", "disabled")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.setdefault("RAY_raylet_start_wait_time_s", "120")  # a busy 2-core machine registers nodes slowly
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` is this one
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    return env


class LocalHead:
    """A Ray head on loopback that only this test owns, started and stopped through its own processes.

    ``num_gpus`` and ``resources`` are declared, not real (a GPU-less machine can pretend); worker
    nodes join with ``add_worker`` and are stopped with the head, or killed alone with ``kill``.
    """

    def __init__(self, num_cpus: int = 2, num_gpus: int = 0, resources: dict | None = None,
                 system_config: dict | None = None, autoscaling: dict | None = None) -> None:
        # Short: Ray's unix socket paths under it must stay below 108 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rrhead-", dir="/tmp"))
        (gcs, self.dashboard_port, client, agent_http, agent_grpc, env_agent, metrics, node_manager,
         object_manager) = free_ports(9)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.log = self.temp_dir / "ray-start.log"
        self.command = [
            str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
            "--port", str(gcs), "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
            "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
            "--metrics-export-port", str(metrics), "--node-manager-port", str(node_manager),
            "--object-manager-port", str(object_manager),
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--disable-usage-stats", "--temp-dir", str(self.temp_dir), *_node_resources(num_cpus, num_gpus, resources),
        ]
        if system_config:
            self.command += ["--system-config", json.dumps(system_config, separators=(",", ":"))]
        self.env = ray_env()
        if autoscaling:
            # Ray's fake multi-node provider: the head's autoscaler starts worker nodes as local
            # processes (its children, so `ours` finds them). It joins the GCS named here, not 6379.
            config = {**autoscaling, "provider": {**autoscaling["provider"], "gcs_address": self.gcs_address}}
            path = self.temp_dir / "autoscaling.yaml"
            path.write_text(json.dumps(config))  # JSON is YAML
            self.command += ["--autoscaling-config", str(path)]
            # The provider knows the head by this id (ray.autoscaler._private.fake_multi_node).
            self.env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                             "RAY_OVERRIDE_NODE_ID_FOR_TESTING": "f" * 51 + "00000"})
        self.process: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def start(self, timeout: float = 120) -> None:
        # --block keeps `ray start` in the foreground as the parent of the head's processes, all in
        # its own process group (which `kill` and `stop` signal); its own session keeps the
        # terminal's signals away from them and ours away from pytest.
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, cwd=self.temp_dir, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ray start exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            # The job API lives in a dashboard module process that comes up after the dashboard
            # itself answers: wait until it lists jobs, or the submission can be dropped. The
            # dashboard answers without a raylet too: the head node must be listed alive, or no
            # worker node can join it.
            try:
                with urllib.request.urlopen(f"{self.address}/api/jobs/", timeout=5) as answer:
                    if isinstance(json.load(answer), list) and any(n.get("is_head_node") for n in self.alive_nodes()):
                        return
            except (OSError, ValueError):  # not listening yet, or not answering JSON yet
                pass
            time.sleep(1)
        raise AssertionError(f"the head (dashboard, job API, head node alive) was not up in {timeout:.0f} s:\n"
                             f"{self.log.read_text()[-3000:]}")

    def add_worker(self, num_cpus: int = 1, num_gpus: int = 0, resources: dict | None = None) -> subprocess.Popen:
        """A worker node joining this head (`ray start --address --block`, its own process group);
        returns once the head lists it alive."""
        ports = free_ports(6)
        # Its own temp dir (inside the head's, so `ours` finds its processes): nodes sharing one would
        # unpack a job's working dir into the same folder, and one node's unpacking removes files
        # that another node's processes are importing.
        temp_dir = self.temp_dir / f"w{len(self.workers)}"
        command = [
            str(BIN / "ray"), "start", "--address", self.gcs_address, "--block", "--node-ip-address", "127.0.0.1",
            "--temp-dir", str(temp_dir),
            "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
            "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
            "--runtime-env-agent-port", str(ports[4]), "--metrics-export-port", str(ports[5]),
            "--disable-usage-stats", *_node_resources(num_cpus, num_gpus, resources),
        ]
        before = len(self.alive_nodes())
        log_path = self.temp_dir / f"worker-{len(self.workers)}.log"
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(command, cwd=self.temp_dir, env=ray_env(), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.workers.append(worker)
        deadline = time.monotonic() + 120
        while len(self.alive_nodes()) <= before:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker node did not join: {log_path.read_text()[-3000:]}")
            time.sleep(1)
        return worker

    def kill(self, worker: subprocess.Popen) -> None:
        """A node lost at once: SIGKILL to the worker's whole process group (raylet, its workers)."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)

    def alive_nodes(self) -> list[dict]:
        """The head's live nodes from Ray's state API: ``node_id``, ``is_head_node``, ``resources_total``..."""
        try:
            with urllib.request.urlopen(f"{self.address}/api/v0/nodes?limit=100", timeout=10) as answer:
                nodes = json.load(answer)["data"]["result"]["result"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [n for n in nodes if n.get("state") == "ALIVE"]

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
        for process in [self.process, *self.workers]:
            if process is not None and process.poll() is None:
                roots.add(process.pid)
        found, frontier = set(), roots - {os.getpid()}
        while frontier:
            found |= frontier
            frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        return {(pid, started[pid]) for pid in found if pid in started}

    def stop(self) -> None:
        """Every process of this head's, gone: each node's process group killed at once (a graceful
        stop takes half a minute a node here and is not what these tests check), then whatever
        left its group (/proc finds it)."""
        before = self.ours()  # snapshot first: orphans lose their parent link once the head is gone
        for node in [*self.workers, self.process]:
            if node is not None and node.poll() is None:
                self.kill(node)
        left = self.alive(before) | self.ours()
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




def _node_resources(num_cpus: int, num_gpus: int, resources: dict | None) -> list[str]:
    args = ["--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus)]
    return args + (["--resources", json.dumps(resources)] if resources else [])


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
