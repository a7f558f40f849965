"""GRID: ten trials from the partition file, distractors in every trial's gallery."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from reidray.datasets import load
from reidray.datasets.grid import SPLIT_FILE, read_trials
from reidray.datasets.synth import write_layout
from reidray.errors import DatasetLayoutError


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("grid") / "underground_reid"
    write_layout(folder, "grid", n_ids=4, n_cams=3, n_train_ids=4, seed=0)
    return folder


def test_trials_follow_the_partition_file(grid: Path) -> None:
    trains = read_trials(grid / SPLIT_FILE)
    rows = load("grid", grid.parent).to_pylist()
    assert rows[0]["image_id"].startswith(("probe/", "gallery/")) and rows[0]["image_id"].endswith(".jpeg")
    paired = {r["pid"] for r in rows if not r["is_distractor"]}
    for t, train in enumerate(trains):
        queries = [r for r in rows if r["split"] == "query" and t in r["grid_trials"]]
        gallery = [r for r in rows if r["split"] == "gallery" and t in r["grid_trials"]]
        assert {r["pid"] for r in queries} == paired - train
        assert {r["pid"] for r in gallery if not r["is_distractor"]} == paired - train
        assert sum(r["is_distractor"] for r in gallery) == sum(r["is_distractor"] for r in rows)
    distractors = [r for r in rows if r["is_distractor"]]
    assert distractors and all(r["pid"] == 0 and r["split"] == "gallery" and r["grid_trials"] == list(range(10))
                               for r in distractors)


def test_trial_column_type(grid: Path) -> None:
    import pyarrow as pa

    assert load("grid", grid).schema.field("grid_trials").type == pa.list_(pa.int8())


def test_struct_array_partition_file_is_read_too(tmp_path: Path) -> None:
    # the same information saved as a 1x10 struct array instead of a cell of structs
    record = np.zeros((1, 10), dtype=[("a", object), ("b", object), ("idx", object)])
    for t in range(10):
        record[0, t] = (np.zeros((1, 1)), np.zeros((1, 1)), np.array([[1, 2, t + 3]]))
    scipy.io.savemat(str(tmp_path / SPLIT_FILE), {"trainIdxAll": record})
    assert read_trials(tmp_path / SPLIT_FILE)[4] == {1, 2, 7}


def test_missing_partition_file(grid: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(grid, tmp_path / "underground_reid")
    (folder / SPLIT_FILE).unlink()
    with pytest.raises(DatasetLayoutError, match=f"'{SPLIT_FILE}' not found.*underground_reid.zip"):
        load("grid", tmp_path)


def test_wrong_partition_file(grid: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(grid, tmp_path / "underground_reid")
    scipy.io.savemat(str(folder / SPLIT_FILE), {"somethingElse": np.ones(3)})
    with pytest.raises(DatasetLayoutError, match="not GRID's partition file"):
        load("grid", folder)
