"""Datasets of your own: market-style folders and manifest files, checked up front, one line per
problem; and the offline example of the README (a python: encoder on a CSV manifest) through `all`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from examples.make_manifest import write_manifest
from reidray import datasets
from reidray.config import DatasetEntry, load_job
from reidray.datasets import custom
from reidray.errors import DatasetLayoutError, ReidrayError
from reidray.run import app

ENCODER = "python:examples.my_encoder:build"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The README's example data: synthetic images and mycams.csv listing them."""
    return write_manifest(tmp_path_factory.mktemp("mydata"), n_ids=12)


def rewrite(src: Path, name: str, keep=lambda row: True, drop: str | None = None, edit=None) -> Path:
    """A variant of the manifest beside it (its paths stay relative to the same folder)."""
    dest = src.parent / f"{name}.csv"
    rows = list(csv.DictReader(src.open()))
    fields = [f for f in rows[0] if f != drop]
    with dest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            if keep(row):
                writer.writerow(edit(dict(row)) if edit else row)
    return dest


def test_a_manifest_is_a_dataset_with_its_own_name_and_protocol(demo):
    assert custom.declare_all([str(demo)]) == ["mycams"]
    spec = datasets.get("mycams")
    table = datasets.load("mycams", custom.folder("mycams"))
    rows = list(csv.DictReader(demo.open()))
    assert spec.protocol == "market" and table.num_rows == len(rows)
    assert table.column("image_id")[0].as_py() == rows[0]["path"]  # relative to the file's folder
    assert Path(table.column("path")[0].as_py()) == demo.parent / rows[0]["path"]


def test_market_style_folder_and_job_entries(demo, tmp_path):
    folder = demo.parent / "reidray-synth"
    job = tmp_path / "job.yaml"
    job.write_text(f"datasets:\n  - lobby=market-style:{folder}\n"
                   f"  - {{name: nocams, source: {demo}, protocol: no-camera-filter}}\n  - market1501\n")
    config = load_job(job)
    assert isinstance(config.datasets[1], DatasetEntry)
    assert custom.declare_all(config.datasets) == ["lobby", "nocams", "market1501"]
    assert datasets.get("lobby").protocol == "market" and datasets.get("nocams").protocol == "no-camera-filter"
    assert datasets.load("lobby", custom.folder("lobby")).num_rows == datasets.load("nocams", custom.folder("nocams")).num_rows
    with pytest.raises(ReidrayError, match="registered dataset"):
        custom.declare(custom.parse_source(str(demo), name="market1501"))
    with pytest.raises(DatasetLayoutError, match="not a folder in Market-1501's layout"):
        custom.declare(custom.parse_source(f"market-style:{tmp_path}"))


def test_without_camid_the_protocol_is_no_camera_filter(demo, tmp_path):
    path = rewrite(demo, "nocam", drop="camid")
    assert datasets.get(custom.declare_all([str(path)])[0]).protocol == "no-camera-filter"


def _first_query(demo: Path) -> dict:
    return next(r for r in csv.DictReader(demo.open()) if r["split"] == "query" and r["junk"] == "0")


@pytest.mark.parametrize("case, expected", [
    ("missing-column", "column pid is missing"),
    ("unreadable-path", "1 path(s) cannot be read as files, e.g. missing/x.jpg (row 1)"),
    ("no-gallery-match", "1 query identity has no gallery image in another camera (protocol market)"),
    ("camid-needed", "column camid is missing (the market protocol needs camera ids"),
    ("bad-split", "column split must be query, gallery or train; found probe"),
])
def test_each_bad_manifest_gives_its_one_line(demo, tmp_path, case, expected):
    query = _first_query(demo)
    protocol = None
    if case == "missing-column":
        path = rewrite(demo, "m", drop="pid")
    elif case == "unreadable-path":
        first = next(csv.DictReader(demo.open()))["path"]
        path = rewrite(demo, "m", edit=lambda r: {**r, "path": "missing/x.jpg"} if r["path"] == first else r)
    elif case == "no-gallery-match":  # the query's identity keeps only gallery images from its own camera
        path = rewrite(demo, "m", keep=lambda r: not (
            r["pid"] == query["pid"] and r["split"] == "gallery" and r["camid"] != query["camid"]))
    elif case == "camid-needed":
        path, protocol = rewrite(demo, "m", drop="camid"), "market"
    else:
        path = rewrite(demo, "m", edit=lambda r: {**r, "split": "probe"} if r == query else r)
    with pytest.raises(DatasetLayoutError) as err:
        custom.declare(custom.parse_source(str(path), protocol=protocol))
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dataset m: manifest {path}: ") and expected in lines[0]


def test_every_problem_of_a_manifest_is_its_own_line(demo, tmp_path):
    path = rewrite(demo, "m", edit=lambda r: {**r, "pid": "abc" if r["split"] == "train" else r["pid"],
                                                               "path": r["path"] + ".gone"})
    with pytest.raises(DatasetLayoutError) as err:
        custom.declare(custom.parse_source(str(path)))
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and "column pid must hold integers" in lines[0] and "cannot be read" in lines[1]


def test_a_bad_manifest_stops_the_run_with_exit_2(demo, tmp_path):
    path = rewrite(demo, "m", drop="split")
    result = CliRunner().invoke(app, ["all", "--out", str(tmp_path / "out"), "-m", ENCODER, "-d", str(path)])
    assert result.exit_code == 2 and "column split is missing" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_your_encoder_on_your_data_through_all(ray_session, demo, tmp_path):
    """The README example: the python: encoder and the CSV manifest, embedded, scored, reported."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["all", "--out", str(out), "-m", f"{ENCODER},random", "-d", str(demo)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = pl.read_parquet(out / "results" / "*.parquet")
    mine = results.filter(pl.col("model") == ENCODER).row(0, named=True)
    assert (mine["dataset"], mine["paradigm"], mine["protocol"], mine["dim"], mine["random_init"]) == (
        "mycams", "custom", "market", 384, False)
    chance = results.filter(pl.col("model") == "random")["mAP"][0]
    assert mine["mAP"] > 2 * chance  # a colour descriptor beats noise on the synthetic people
    cell = json.loads(next((out / "embeddings").glob("python_examples*/mycams/cell.json")).read_text())
    assert cell["model"] == ENCODER and cell["source"]["library"] == "python" and cell["paradigm"] == "custom"
    report = (out / "report" / "results.md").read_text()
    assert f"| {ENCODER} | custom |" in report and "mycams" in report
    assert "Not in the paper, so evaluated alike and never compared with it" in report
    # serve: the cell is a gallery under its own names, searchable when the server is given the reference
    from reidray.serve.app import served_specs
    from reidray.serve.galleries import Galleries, list_galleries
    from reidray.serve.settings import ServeSettings
    from reidray.store import Store

    store = Store.open(str(out))
    rows = {(row["model"], row["dataset"]): marker for row, marker in list_galleries(store)}
    assert (ENCODER, "mycams") in rows
    assert Galleries(store, max_kept=1, random_init=False).problem(ENCODER, "mycams", rows[ENCODER, "mycams"]) is None
    assert ENCODER in served_specs(ServeSettings(out=str(out), references=[ENCODER]))
    assert ENCODER not in served_specs(ServeSettings(out=str(out)))  # never one a client names
