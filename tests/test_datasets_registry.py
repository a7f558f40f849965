"""Registry, discovery and manifest validation: the parts every dataset module relies on."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from reidray.datasets import get, load, names
from reidray.datasets.manifest import SCHEMA, Rows, build, validate
from reidray.errors import DatasetLayoutError, ReidrayError, UnknownNameError


def test_registry_names_and_unknown_name() -> None:
    assert {"market1501", "reidray-synth"} <= set(names())
    assert get("market1501").official["query"].images == 3368
    with pytest.raises(UnknownNameError, match="market1501"):
        get("market-1501")


def _rows(tmp_path: Path, entries: list[tuple[str, str]]) -> Rows:
    rows = Rows(tmp_path)
    for i, (name, split) in enumerate(entries):
        rows.add(tmp_path / name, i, 0, split)
    return rows


def test_manifest_has_the_contract_columns_in_order(tmp_path: Path) -> None:
    table = build(_rows(tmp_path, [("q/a.jpg", "query"), ("g/b.jpg", "gallery")]), "t")
    assert table.schema.equals(SCHEMA)
    assert table.column("image_id").to_pylist() == ["q/a.jpg", "g/b.jpg"]


@pytest.mark.parametrize(
    "entries, message",
    [
        ([("g/b.jpg", "gallery")], "no query images"),
        ([("q/a.jpg", "query")], "no gallery images"),
        ([("q/a.jpg", "query"), ("g/b.jpg", "gallery"), ("x/c.jpg", "val")], "invalid split"),
    ],
)
def test_manifest_validation_names_the_problem(tmp_path: Path, entries: list, message: str) -> None:
    with pytest.raises(DatasetLayoutError, match=message):
        build(_rows(tmp_path, entries), "t")


def test_duplicate_image_ids_are_refused(tmp_path: Path) -> None:
    table = build(_rows(tmp_path, [("q/a.jpg", "query"), ("g/b.jpg", "gallery")]), "t")
    with pytest.raises(DatasetLayoutError, match="q/a.jpg"):
        validate(pa.concat_tables([table, table]), "t")


def test_extra_columns_follow_the_schema(tmp_path: Path) -> None:
    rows = Rows(tmp_path, pa.schema([("trials", pa.list_(pa.int8()))]))
    rows.add(tmp_path / "a.jpg", 1, 0, "query", trials=[0, 3])
    rows.add(tmp_path / "b.jpg", 1, 1, "gallery", trials=[3])
    table = build(rows, "t")
    assert table.schema.names == SCHEMA.names + ["trials"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        load("market1501", tmp_path / "absent")
    with pytest.raises(DatasetLayoutError, match="no Market-1501 folder"):
        load("market1501", tmp_path)
    with pytest.raises(ReidrayError, match="unknown option"):
        load("market1501", tmp_path, variant="labeled")


def test_two_candidate_folders_are_ambiguous(tmp_path: Path) -> None:
    for top in ("market1501", "Market-1501-v15.09.15"):
        for sub in ("query", "bounding_box_test"):
            (tmp_path / top / sub).mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="several"):
        load("market1501", tmp_path)
