"""Every dataset's parser against its synthetic release: what was written is what is parsed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from reidray.datasets import discover, load, summarize
from reidray.datasets.manifest import SCHEMA
from reidray.datasets.synth import generate, layouts, write_layout

# layout -> (dataset name, the truth rows that the default options should parse)
CASES = {
    "market1501": ("market1501", lambda t: True),
    "dukemtmcreid": ("dukemtmcreid", lambda t: True),
    "msmt17": ("msmt17", lambda t: True),
    "msmt17-v2": ("msmt17", lambda t: True),
    "cuhk03": ("cuhk03", lambda t: t["variant"] == "detected"),
    "cuhk03-np": ("cuhk03", lambda t: t["variant"] == "detected"),
    "grid": ("grid", lambda t: True),
    "celebreid": ("celebreid", lambda t: True),
    "pku": ("pku", lambda t: True),
    "last": ("last", lambda t: t["eval_set"] != "val"),
    "iust": ("iust", lambda t: True),
}
KEYS = ["image_id", "pid", "camid", "split", "is_junk", "is_distractor"]
EXTRA = ["grid_trials", "clothes_id"]  # dataset-specific columns, compared where the truth has them
SMALL = {"n_ids": 4, "n_cams": 3, "n_train_ids": 2, "seed": 2}


def _key(row: dict, extra: list[str]) -> tuple:
    values = [row[k] for k in KEYS + extra]
    return tuple(tuple(v) if isinstance(v, list) else v for v in values)


def test_every_layout_is_covered() -> None:
    assert sorted(CASES) == layouts()


@pytest.mark.parametrize("layout_name", sorted(CASES))
def test_parser_reads_what_was_written(tmp_path: Path, layout_name: str) -> None:
    if layout_name == "cuhk03":
        pytest.importorskip("h5py")
    dataset, wanted = CASES[layout_name]
    folder = tmp_path / "ds"
    truth = [t for t in write_layout(folder, layout_name, **SMALL) if wanted(t)]
    table = load(dataset, folder)
    assert table.schema.names[: len(SCHEMA)] == SCHEMA.names
    extra = [c for c in EXTRA if c in truth[0]]
    assert set(extra) <= set(table.schema.names)
    assert sorted(_key(r, extra) for r in table.to_pylist()) == sorted(_key(t, extra) for t in truth)
    rows = table.to_pylist()
    for split in ("query", "gallery"):
        assert Counter(r["split"] for r in rows)[split] == Counter(t["split"] for t in truth)[split] > 0
    for row in rows:
        assert Path(row["path"]) == folder.absolute() / row["image_id"] and Path(row["path"]).is_file()


@pytest.mark.parametrize("layout_name", ["msmt17-v2", "grid", "pku", "last"])
def test_generated_layout_is_discovered_under_its_usual_folder_name(tmp_path: Path, layout_name: str) -> None:
    dataset = CASES[layout_name][0]
    folder = generate(tmp_path, layout=layout_name, n_ids=4, n_cams=2, n_train_ids=2)
    assert discover(tmp_path) == {dataset: folder}
    summary = [r for r in summarize(tmp_path) if r["dataset"] == dataset]
    assert {r["split"] for r in summary} >= {"query", "gallery"} and not any(r["error"] for r in summary)
    assert any(r["mismatch"] for r in summary)  # a tiny synthetic copy never has the official counts
