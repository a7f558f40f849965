"""Fault injection on a stored run: every damaged file is found, named with its fix, and repaired.

One real run (``all``: the handcrafted and random models on the synthetic dataset) is made per
module and copied for each test. For every fault: no wrong number comes out with exit status 0,
the message names the file and the fix, and a rerun (with ``--redo`` where the message says so)
ends with exactly the clean run's results.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from reidray.cells import CellRecord
from reidray.datasets.synth import generate
from reidray.errors import ReidrayError
from reidray.lease import CellBusyError, Lease, cell_lease, lease_path
from reidray.run import app
from reidray.store import Store, seal_parts

DATASET = "reidray-synth"
MODELS = ("handcrafted", "random")
CELL = f"handcrafted/{DATASET}"
METRICS = ["model", "dataset", "mAP", "rank1", "rank5", "rank10", "mINP", "n_query", "n_gallery"]


def cli(data: Path, out: Path, *args: str, models: str = ",".join(MODELS)):
    argv = [*args, "--out", str(out)]
    if args[0] != "report":
        argv += ["--data-root", str(data), "-m", models, "-d", DATASET]
    return CliRunner().invoke(app, argv, catch_exceptions=False)


def numbers(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "results" / "*.parquet").select(METRICS).sort("model")


@pytest.fixture(scope="module")
def clean(ray_session, tmp_path_factory) -> tuple[Path, Path, pl.DataFrame]:
    """The synthetic data, one complete run on it, and that run's numbers."""
    data = tmp_path_factory.mktemp("data")
    generate(data, n_ids=20)  # small: every test embeds a cell again
    out = tmp_path_factory.mktemp("clean") / "out"
    result = cli(data, out, "all")
    assert result.exit_code == 0, result.output
    return data, out, numbers(out)


@pytest.fixture
def run(clean, tmp_path) -> tuple[Path, Path]:
    """A private copy of the clean run to damage."""
    data, out, _ = clean
    shutil.copytree(out, tmp_path / "out")
    return data, tmp_path / "out"


def cell_dir(out: Path, model: str = "handcrafted") -> Path:
    return out / "embeddings" / model / DATASET


def first_part(out: Path) -> Path:
    return sorted(cell_dir(out).glob("*.parquet"))[0]


def _delete(out: Path) -> None:
    first_part(out).unlink()


def _duplicate(out: Path) -> None:
    part = first_part(out)
    shutil.copy(part, part.with_name(f"copy-{part.name}"))


def _truncate(out: Path) -> None:
    part = first_part(out)
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])


def _bit_flip(out: Path) -> None:
    part = first_part(out)
    data = bytearray(part.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    part.write_bytes(bytes(data))


def _edit_marker(field: str) -> Callable[[Path], None]:
    def edit(out: Path) -> None:
        marker = cell_dir(out) / "cell.json"
        record = json.loads(marker.read_text())
        record[field] += 7
        marker.write_text(json.dumps(record))
    return edit


FAULTS = {
    "deleted part": (_delete, "is missing"),
    "duplicated part": (_duplicate, "is not listed in cell.json"),
    "truncated part": (_truncate, "(truncated or replaced)"),
    "bit-flipped part": (_bit_flip, "does not match its SHA-256"),
    "edited n_images": (_edit_marker("n_images"), "records n_images="),
    "edited dim": (_edit_marker("dim"), "cell.json records dim="),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_damaged_cell_is_refused_by_name_and_redone_by_the_next_run(clean, run, fault):
    data, out = run
    damage, says = FAULTS[fault]
    damage(out)
    scored = cli(data, out, "score")
    assert scored.exit_code == 1, scored.output
    failed = next(line for line in scored.output.splitlines() if line.startswith(f"FAILED cell {CELL}"))
    assert says in failed and "--redo" in failed, failed
    # The damaged cell's old numbers are gone; the other cell's are still current.
    assert not (out / "results" / f"handcrafted__{DATASET}.parquet").exists()
    report = cli(data, out, "report")
    assert report.exit_code == 0 and "| handcrafted |" not in report.output, report.output
    assert "| random |" in report.output
    # The next run finds the damage itself, says why it redoes the cell, and ends as a clean run.
    again = cli(data, out, "all")
    assert again.exit_code == 0, again.output
    assert f"embed {CELL}: redoing the cell: " in again.output and says in again.output
    assert numbers(out).equals(clean[2])


def test_nan_embeddings_are_counted_named_and_the_cell_redone(clean, run):
    data, out = run
    part = first_part(out)
    table = pq.read_table(part)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    vectors[[2, 5]] = np.nan  # as an encoder that overflowed would have written them
    dim = vectors.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim)
    pq.write_table(table.set_column(table.schema.get_field_index("embedding"), "embedding", column), part)
    store = Store.open(str(out))
    record = CellRecord.from_marker(store.cell_marker("handcrafted", DATASET), skipped=False)
    parts, _ = seal_parts(store, "handcrafted", DATASET)  # the record matches its files: only the values are bad
    marker = {**record.to_marker(), "parts": [p.__dict__ for p in parts], "total_bytes": sum(p.bytes for p in parts)}
    (cell_dir(out) / "cell.json").write_text(json.dumps(marker))

    scored = cli(data, out, "score")
    assert scored.exit_code == 1, scored.output
    ids = table.column("image_id").to_pylist()
    assert f"2 embeddings are NaN or infinite (first: {ids[2]}, {ids[5]})" in scored.output
    assert "marked invalid" in scored.output and "--redo" in scored.output
    assert (cell_dir(out) / "invalid.json").is_file()
    assert not (out / "results" / f"handcrafted__{DATASET}.parquet").exists()
    again = cli(data, out, "all")
    assert again.exit_code == 0 and f"embed {CELL}: redoing the cell: marked invalid" in again.output, again.output
    assert numbers(out).equals(clean[2])


def test_a_new_image_that_fails_clears_the_old_numbers_from_the_report(clean, run, tmp_path):
    _, out = run
    data = tmp_path / "data"
    shutil.copytree(clean[0], data)
    query = data / DATASET / "query"
    name = sorted(query.iterdir())[0].name
    blank = query / f"{name[:-6]}99.jpg"  # another frame of a known identity and camera
    blank.write_bytes(b"")
    result = cli(data, out, "all")
    assert result.exit_code == 1, result.output
    assert blank.name in result.output
    assert not list((out / "results").glob("*.parquet")), "a cell that failed kept its old numbers"
    assert not (out / "report" / "results.md").exists(), "the old report still shows the old numbers"
    report = cli(data, out, "report")
    assert report.exit_code == 2 and "no results under" in report.output
    blank.unlink()
    again = cli(data, out, "all")
    assert again.exit_code == 0, again.output
    assert numbers(out).equals(clean[2])


def test_a_corrupt_results_file_is_named_and_the_others_still_reported(clean, run):
    data, out = run
    path = out / "results" / f"random__{DATASET}.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    report = cli(data, out, "report")
    assert report.exit_code == 0, report.output
    line = next(x for x in report.output.splitlines() if x.startswith("left out of the report"))
    assert str(path) in line and "cannot be read" in line and f"score -m random -d {DATASET} --redo" in line
    assert "| handcrafted |" in report.output and "| random |" not in report.output
    rescored = cli(data, out, "score", "--redo", models="random")
    assert rescored.exit_code == 0, rescored.output
    assert numbers(out).equals(clean[2])


def test_a_folder_in_place_of_a_results_file_is_named(clean, run):
    data, out = run
    path = out / "results" / f"random__{DATASET}.parquet"
    path.unlink()
    path.mkdir()
    report = cli(data, out, "report")
    assert report.exit_code == 0 and f"results path {path} is not a file; move it away" in report.output
    scored = cli(data, out, "score", models="random")
    assert scored.exit_code == 1
    assert f"results file {path} cannot be written" in scored.output and "move whatever is there away" in scored.output
    path.rmdir()
    assert cli(data, out, "score", models="random").exit_code == 0
    assert numbers(out).equals(clean[2])


@pytest.mark.parametrize("kind", ["invalid JSON", "a folder"])
def test_an_unreadable_marker_stops_its_cell_until_redo(clean, run, kind):
    data, out = run
    marker = cell_dir(out) / "cell.json"
    marker.unlink()
    if kind == "a folder":
        marker.mkdir()
    else:
        marker.write_text('{"model": "handcrafted", "fing')
    parts = sorted(p.name for p in cell_dir(out).glob("*.parquet"))
    result = cli(data, out, "all")
    assert result.exit_code == 1, result.output
    failed = next(line for line in result.output.splitlines() if line.startswith(f"FAILED cell {CELL}"))
    assert f"{marker} exists but cannot be read" in failed and "--redo" in failed
    # A read that fails is not "never embedded": the cell's files are left as they were.
    assert sorted(p.name for p in cell_dir(out).glob("*.parquet")) == parts
    assert "| handcrafted |" not in cli(data, out, "report").output
    if kind == "a folder":
        marker.rmdir()  # --redo clears files, never a folder a person put there
    again = cli(data, out, "all", "--redo", models="handcrafted")
    assert again.exit_code == 0 and f"embed {CELL}: redoing the cell: --redo asked for it" in again.output
    assert numbers(out).equals(clean[2])


def test_results_of_an_embedding_since_replaced_are_left_out(run):
    data, out = run
    marker = cell_dir(out, "random") / "cell.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "fingerprint": "0123456789abcdef"}))
    report = cli(data, out, "report")
    assert report.exit_code == 0, report.output
    assert f"cell random/{DATASET} was embedded again since these rows were scored" in report.output
    assert "| random |" not in report.output and "| handcrafted |" in report.output


def test_serve_lists_a_damaged_gallery_as_not_searchable_with_the_fault(run):
    from reidray.serve.galleries import Galleries, list_galleries

    _, out = run
    _delete(out)
    (cell_dir(out, "random") / "cell.json").write_text("{")
    store = Store.open(str(out))
    galleries = Galleries(store, max_kept=2, random_init=False)
    problems = {row["model"]: galleries.problem(row["model"], row["dataset"], marker)
                for row, marker in list_galleries(store)}
    assert "is missing (cell.json lists" in problems["handcrafted"] and "--redo" in problems["handcrafted"]
    assert "cell.json exists but cannot be read" in problems["random"]


def test_read_json_tells_missing_from_unreadable(tmp_path):
    store = Store.open(str(tmp_path))
    assert store.read_json(store.path("nothing.json")) is None
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ReidrayError, match=r"bad\.json exists but cannot be read \(JSONDecodeError"):
        store.read_json(store.path("bad.json"))


def test_a_live_lease_is_busy_and_a_dead_or_silent_one_is_taken_over(tmp_path):
    store = Store.open(str(tmp_path))
    path = Path(lease_path(store, "m", "d"))
    holder = Lease(store, "m", "d")
    assert holder.try_claim() is None
    with pytest.raises(CellBusyError, match=f"busy, held by pid {os.getpid()} on {socket.gethostname()}"):
        with cell_lease(store, "m", "d", wait=False, say=print):
            pass
    holder.release()
    assert not path.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    for lease in ({"host": socket.gethostname(), "pid": int(dead.stdout), "started": now, "renewed": now},
                  {"host": "elsewhere", "pid": 1, "started": now - 3600, "renewed": now - 3600}):
        path.write_text(json.dumps(lease))
        with cell_lease(store, "m", "d", wait=False, say=print) as claimed:
            assert json.loads(path.read_text())["token"] == claimed.token
        assert not path.exists()


@pytest.mark.slow
def test_two_concurrent_runs_on_one_root_share_the_grid(ray_session, clean, tmp_path):
    data, _, expected = clean
    out = tmp_path / "out"
    address = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "reidray.run", "all", "--data-root", str(data), "--out", str(out),
           "-m", ",".join(MODELS), "-d", DATASET, "--address", address]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    time.sleep(2)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert numbers(out).equals(expected)
    for model in MODELS:  # each cell embedded by exactly one of the runs; the other found it done
        embedded = [o for o in outputs if any(line.startswith(f"embed {model}/{DATASET}: ") and " images in " in line
                                              for line in o.splitlines())]
        assert len(embedded) == 1, outputs
    assert "busy, held by pid" in "\n".join(outputs) or "complete already" in "\n".join(outputs), outputs
