"""A new user's first mistakes, through the real command in its own process: each one stops quickly
with one line that names the cause and the fix (exit 2), never a traceback, a hang or stray work."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.bench_serve import free_ports
from reidray.run import INTERRUPTED

FAST = 60  # seconds: a mistake found before Ray starts is reported well within this (import included)


def cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300,
        unset: tuple[str, ...] = ()) -> tuple[int, str, str, float]:
    """``python -m reidray.run ARGS`` in a fresh process, with ``env`` over this one's and the
    ``unset`` variables gone: (exit status, stdout, stderr, seconds)."""
    start = time.monotonic()
    environ = {key: value for key, value in {**os.environ, **(env or {})}.items() if key not in unset}
    done = subprocess.run([sys.executable, "-m", "reidray.run", *args], capture_output=True, text=True,
                          timeout=timeout, env=environ, cwd=cwd)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - start


def one_line_error(rc: int, out: str, err: str, seconds: float, *words: str, limit: float = FAST) -> str:
    """The checks every user mistake shares: exit 2, one line on stderr naming it, no traceback, quick."""
    assert rc == 2, out + err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert seconds < limit, seconds
    return lines[0]


# --- names checked before any work ---------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["-m", "handcrafted,no-such-model"], ["unknown model 'no-such-model'", "handcrafted"]),
    (["-d", "no-such-set"], ["unknown dataset 'no-such-set'", "market1501"]),
])
def test_an_unknown_name_on_the_command_line_stops_before_any_work(tmp_path, args, words):
    out = tmp_path / "out"
    one_line_error(*cli("all", "--out", str(out), *args), *words)
    assert not (out / "data").exists()  # the synthetic dataset was not generated


def test_an_unknown_name_in_a_job_file_names_its_file_and_line(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: x\nmodels:\n  - handcrafted\n  - {name: no-such-model}\ndatasets: [reidray-synth]\n")
    out = tmp_path / "out"
    one_line_error(*cli("all", "--job", str(job), "--out", str(out)), f"{job}, line 4", "unknown model 'no-such-model'")
    job.write_text("datasets:\n  - reidray-synth\n  - market-1501\n")
    one_line_error(*cli("embed", "--job", str(job), "--out", str(out)), "line 3", "unknown dataset 'market-1501'")
    assert not (out / "data").exists()


def test_score_on_an_empty_root_says_to_embed_first(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    one_line_error(*cli("score", "--out", str(out)), "nothing embedded yet; run `embed` or `all`")
    assert list(out.iterdir()) == []  # no data generated, nothing written


@pytest.mark.parametrize("command", ["score", "report"])
def test_reading_a_root_that_is_not_there_creates_nothing(tmp_path, command):
    out = tmp_path / "typo"
    one_line_error(*cli(command, "--out", str(out)), f"output root {out} does not exist", "--out")
    assert not out.exists()


def test_datasets_on_a_missing_folder_exits_2_and_the_builtin_one_is_never_missing(tmp_path):
    one_line_error(*cli("datasets", "--data-root", str(tmp_path / "nope")), "does not exist", "nope")
    rc, out, err, _ = cli("datasets", "--data-root", str(tmp_path))
    assert rc == 0, err
    missing = next(line for line in out.splitlines() if line.startswith("not found:"))
    assert "market1501" in missing and "reidray-synth" not in missing


# --- no tracebacks for user mistakes --------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("synthetic:\n  n_idz: 30\n", ["line 2", "synthetic.n_idz"]),
    ("models: [handcrafted\ndatasets: x\n", ["line 2", "not valid YAML"]),
    ("name: x\nsynthetic: {n_ids: 1000000000000}\n", ["synthetic dataset of 1,000,000,000,000 ids", "GB on disk",
                                                      "GB of memory", "lower synthetic.n_ids"]),
])
def test_a_bad_job_file_is_one_line(tmp_path, text, words):
    job = tmp_path / "job.yaml"
    job.write_text(text)
    line = one_line_error(*cli("all", "--job", str(job), "--out", str(tmp_path / "out")), *words)
    assert str(job) in line or "synthetic dataset" in line


@pytest.mark.parametrize("args, words", [
    (["serve", "--port", "70000"], ["port 70000", "between 1 and 65535"]),
    (["serve", "--port", "-1"], ["port -1", "between 1 and 65535"]),
    (["serve", "--host", "0.0.0.0", "--token", "   "], ["without a bearer token", "--token"]),
    (["all", "--out", ""], ["output root is empty", "--out"]),
    (["report", "--out", ""], ["output root is empty", "--out"]),
    (["report", "--out", " "], ["output root is empty", "--out"]),
])
def test_bad_options_are_one_line(tmp_path, args, words):
    # an empty --out must not write into the current folder either
    one_line_error(*cli(*args, env={"REIDRAY_SERVE_TOKEN": ""}, cwd=tmp_path), *words)
    assert not list(tmp_path.iterdir())


# --- no silent waits ------------------------------------------------------------------------------
def test_an_address_nothing_answers_on_stops_within_the_wait(tmp_path):
    address = f"127.0.0.1:{free_ports(1)[0]}"
    out = tmp_path / "out"
    line = one_line_error(*cli("all", "--out", str(out), "--address", address, env={"REIDRAY_WAIT_SECONDS": "3"}),
                          f"no Ray cluster answers at {address}", "ray start --head", "REIDRAY_WAIT_SECONDS")
    assert "tried for 3 s" in line
    assert not (out / "data").exists()


@pytest.mark.slow
def test_score_tasks_no_node_can_hold_stop_the_run_before_embedding(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("score:\n  num_cpus: 64\n")
    out = tmp_path / "out"
    rc, stdout, err, seconds = cli("all", "--job", str(job), "--out", str(out), "-m", "handcrafted",
                                   env={"RAY_ADDRESS": ""})
    one_line_error(rc, stdout, err, seconds, "each score task asks for 64 CPU but no node has that",
                   "the Ray this run started never has more", "lower score.num_cpus in the job file", limit=180)
    assert not (out / "embeddings").exists()


def test_score_tasks_no_node_of_a_joined_cluster_can_hold_are_waited_for_then_stop_the_run(ray_session, tmp_path):
    """On a cluster (--address) an autoscaler may add the node: the run says so, waits the bounded
    time ($REIDRAY_WAIT_SECONDS, here 3 s), then stops in one line naming the resource and the fix."""
    job = tmp_path / "job.yaml"
    job.write_text("score:\n  num_cpus: 64\nsynthetic: {n_ids: 4}\n")
    out = tmp_path / "out"
    address = ray_session.get_runtime_context().gcs_address
    rc, stdout, err, seconds = cli("all", "--job", str(job), "--out", str(out), "-m", "handcrafted", "--address",
                                   address, env={"REIDRAY_WAIT_SECONDS": "3"})
    one_line_error(rc, stdout, err, seconds, "each score task: no node with 64 CPU appeared in 3 s",
                   "lower score.num_cpus in the job file")
    waiting = [line for line in stdout.splitlines() if "waiting up to 3 s for the autoscaler" in line]
    assert len(waiting) == 1 and "REIDRAY_WAIT_SECONDS" in waiting[0], stdout
    assert not (out / "embeddings").exists()


def test_every_wait_is_60_seconds_unless_set(monkeypatch):
    from reidray.config import wait_seconds
    from reidray.errors import ReidrayError

    monkeypatch.delenv("REIDRAY_WAIT_SECONDS", raising=False)
    assert wait_seconds() == 60
    monkeypatch.setenv("REIDRAY_WAIT_SECONDS", "600")
    assert wait_seconds() == 600
    monkeypatch.setenv("REIDRAY_WAIT_SECONDS", "ten")
    with pytest.raises(ReidrayError, match="REIDRAY_WAIT_SECONDS='ten' is not a number of seconds"):
        wait_seconds()


# --- Ctrl-C ---------------------------------------------------------------------------------------
def _ray_processes(temp_dir: Path) -> list[str]:
    """Command lines of live processes that belong to the Ray instance under ``temp_dir`` (-ww: whole
    lines, whatever width the terminal or COLUMNS claims)."""
    ps = subprocess.run(["ps", "-wweo", "stat=,args="], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if str(temp_dir) in line and not line.lstrip().startswith("Z")]


@pytest.mark.slow
@pytest.mark.parametrize("command, ready", [
    (["all", "-m", "handcrafted", "-d", "reidray-synth"], "embed handcrafted/reidray-synth"),
    (["serve"], None),
])
def test_ctrl_c_stops_everything_with_one_line(tmp_path, command, ready):
    """Ctrl-C, as a terminal sends it (SIGINT to the whole process group), mid-embed and during
    serve's start-up: one line, exit 130, no traceback, no Ray process left behind."""
    temp_dir = Path(f"/tmp/rr-{os.getpid()}-{len(command)}")  # short: Ray's socket paths have a length limit
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(temp_dir), "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "reidray.run", *command, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        if ready is None:  # serve: interrupt once its Ray is up, while Serve starts
            while not _ray_processes(temp_dir) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(5)
        else:
            for line in proc.stdout:
                if ready in line or time.monotonic() > deadline:
                    break
        assert proc.poll() is None, proc.stderr.read()
        os.killpg(proc.pid, signal.SIGINT)
        start = time.monotonic()
        stdout, stderr = proc.communicate(timeout=90)
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr, stderr
    assert stderr.strip().splitlines()[-1] == INTERRUPTED, stderr
    assert seconds < 60, seconds
    time.sleep(5)  # what Ray stops, it stops asynchronously
    assert _ray_processes(temp_dir) == []


# --- disk full ------------------------------------------------------------------------------------
@pytest.fixture
def full_disk(tmp_path):
    """A 200 KB tmpfs: room for the manifest, not for the embeddings (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_full_disk_fails_the_cell_in_one_line_naming_the_cause(tmp_path, full_disk):
    from reidray.datasets.synth import generate

    generate(tmp_path / "data", n_ids=30)
    rc, out, err, _ = cli("embed", "--data-root", str(tmp_path / "data"), "--out", str(full_disk / "out"),
                          "-m", "handcrafted", "-d", "reidray-synth", env={"RAY_ADDRESS": ""})
    assert rc == 1, out + err
    assert "Traceback" not in out + err
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "No space left on device" in failed[0] and "the disk is full" in failed[0]
    assert "ray-data.log" in failed[0]  # where Ray's own trace is
    assert not (full_disk / "out" / "embeddings" / "handcrafted" / "reidray-synth" / "cell.json").exists()


# --- quiet by default -----------------------------------------------------------------------------
# A line of Ray's own logs: its C++ core's "[2026-12-02 18:32:52,051 E 4107 4743] core_worker.cc:..."
# or its Python loggers' "2026-12-02 18:35:30,438\tWARNING worker.py:..."
RAY_LOG_LINE = re.compile(r"^\[?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(?:[DIWEF] \d+ \d+\]|[A-Z]+\s)", re.M)


def test_the_stderr_filter_drops_only_rays_known_false_alarm(capfd):
    """While a cell embeds, stderr goes through a filter: Ray's actor-constructor E line is dropped,
    every other line still reaches the user, in order, before anything written after the block."""
    from reidray.connect import ray_false_alarms_hidden

    alarm = ("[2026-12-02 18:32:52,051 E 4107 4743] core_worker.cc:2465: Actor with class name: 'MapWorker(x)' "
             "and ID: 'ab' has constructor arguments in the object store and max_restarts > 0. If the arguments "
             "in the object store go out of scope or are lost, the actor restart will fail.\n")
    with ray_false_alarms_hidden():
        os.write(2, b"a real problem\n")
        os.write(2, alarm.encode())
        os.write(2, b"Traceback (most recent call last):\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "a real problem\nTraceback (most recent call last):\nafter\n"


@pytest.mark.slow
def test_a_healthy_run_prints_only_reidrays_lines_and_verbose_adds_rays(tmp_path):
    """A first run as a new user makes it (a local Ray, Ray's default token authentication): nothing
    on stderr, no line of Ray's (its core worker's E-level actor-constructor line included), one
    line per cell scored; the rerun with -v shows Ray's own lines and skips the current results."""
    job = tmp_path / "job.yaml"
    job.write_text("synthetic: {n_ids: 20}\n")
    args = ("all", "--job", str(job), "--out", str(tmp_path / "out"), "-m", "handcrafted")
    rc, out, err, _ = cli(*args, env={"RAY_ADDRESS": ""}, unset=("RAY_AUTH_MODE",))
    assert rc == 0, out + err
    assert err == "", err
    assert not RAY_LOG_LINE.search(out), out
    lines = out.splitlines()
    assert any(line.startswith("embed handcrafted/reidray-synth: ") and " images in " in line for line in lines), out
    assert lines.count("score handcrafted/reidray-synth: stored") == 1, out
    rc, out, err, _ = cli(*args, "-v", env={"RAY_ADDRESS": ""}, unset=("RAY_AUTH_MODE",))
    assert rc == 0, out + err
    assert RAY_LOG_LINE.search(out + err), out + err
    assert "score handcrafted/reidray-synth: results current already, skipped" in out.splitlines()


def test_the_default_grid_says_what_it_leaves_out_in_short_lines(tmp_path):
    from reidray import flow
    from reidray.config import JobConfig
    from reidray.datasets.synth import generate
    from reidray.store import Store

    generate(tmp_path / "data", n_ids=2, n_cams=2)
    lines: list[str] = []
    grid = flow.resolve_grid(JobConfig(output=str(tmp_path / "out"), data_root=str(tmp_path / "data")),
                             Store.open(str(tmp_path / "out")), lines.append)
    assert "random" not in grid.models and "handcrafted" in grid.models
    assert any(line.startswith("left out: random (the chance-level control") for line in lines), lines
    skips = [line for line in lines if line.startswith("skip ")]
    assert all(line.endswith(": no weights on this machine") for line in skips), skips
    assert sum(line == flow.WEIGHTS_POINTER for line in lines) == (1 if skips else 0)
    assert "`python -m reidray.run weights`" in flow.WEIGHTS_POINTER


def test_score_names_a_named_cell_that_is_not_stored(tmp_path):
    """Only the cell asked for and missing fails; nothing is scored, so Ray is never needed."""
    from reidray.cells import CellRecord
    from reidray.models import get
    from reidray.store import Store

    store = Store.open(str(tmp_path))
    spec = get("handcrafted")
    record = CellRecord(model="handcrafted", dataset="reidray-synth", fingerprint="f", n_images=1, dim=spec.dim,
                        embed_seconds=0.0, device="cpu", precision="fp32", random_init=False,
                        weights_id=spec.weights_id, paradigm=spec.paradigm, params_m=spec.params_m,
                        metric=spec.metric, normalize=spec.normalize)
    store.write_json(f"{store.cell_dir('handcrafted', 'reidray-synth')}/cell.json", record.to_marker())
    one_line_error(*cli("score", "--out", str(tmp_path), "-m", "random"),
                          "no stored cell of the models and datasets named", "stored: handcrafted/reidray-synth")
    rc, out, err, seconds = cli("score", "--out", str(tmp_path), "-m", "random", "-d", "reidray-synth")
    assert rc == 1 and seconds < FAST, out + err
    assert out.splitlines() == ["FAILED cell random/reidray-synth: no complete embeddings stored; run `embed` first"]
    assert "Traceback" not in err
