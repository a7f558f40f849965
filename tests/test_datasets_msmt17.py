"""MSMT17: list files are required and trusted only when every listed image exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from reidray.datasets import load
from reidray.datasets.synth import write_layout
from reidray.errors import DatasetLayoutError

SMALL = {"n_ids": 4, "n_cams": 3, "n_train_ids": 2, "seed": 1}


@pytest.fixture(scope="module")
def msmt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("msmt")
    return root / "MSMT17_V1", write_layout(root / "MSMT17_V1", "msmt17", **SMALL)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_train_and_test_pids_are_separate_numberings(msmt: tuple[Path, list[dict]]) -> None:
    folder, _ = msmt
    rows = load("msmt17", folder).to_pylist()
    train = {r["pid"] for r in rows if r["split"] == "train"}
    test = {r["pid"] for r in rows if r["split"] != "train"}
    assert min(train) == 0 and min(test) == 0  # both start at 0, as in the release
    assert all(r["image_id"].split("/")[1] == f"{r['pid']:04d}" for r in rows)  # per-identity folders
    first = next(r for r in rows if r["split"] == "query")
    assert first["camid"] == int(Path(first["image_id"]).name.split("_")[2]) - 1


def test_missing_query_list_says_what_to_do(msmt: tuple[Path, list[dict]], tmp_path: Path) -> None:
    folder = _copy(msmt[0], tmp_path / "MSMT17_V1")
    (folder / "list_query.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"'list_query.txt' not found.*official MSMT17 release"):
        load("msmt17", tmp_path)


def test_listed_image_that_is_missing_stops_the_parse(msmt: tuple[Path, list[dict]], tmp_path: Path) -> None:
    folder = _copy(msmt[0], tmp_path / "MSMT17_V1")
    first = (folder / "list_gallery.txt").read_text().split()[0]
    (folder / "test" / first).unlink()
    with pytest.raises(DatasetLayoutError, match=f"list_gallery.txt.*first: {first}"):
        load("msmt17", folder)


def test_malformed_list_line_names_the_line(msmt: tuple[Path, list[dict]], tmp_path: Path) -> None:
    folder = _copy(msmt[0], tmp_path / "MSMT17_V1")
    with (folder / "list_query.txt").open("a") as f:
        f.write("0001/0001_000_01_0303morning_0001_0.jpg\n")
    with pytest.raises(DatasetLayoutError, match="list_query.txt line"):
        load("msmt17", folder)


def test_both_versions_in_one_folder_is_refused(msmt: tuple[Path, list[dict]], tmp_path: Path) -> None:
    folder = _copy(msmt[0], tmp_path / "msmt17")
    (folder / "mask_test_v2").mkdir()
    with pytest.raises(DatasetLayoutError, match="both V1"):
        load("msmt17", folder)


def test_evaluation_only_copy_without_train_lists_loads(msmt: tuple[Path, list[dict]], tmp_path: Path) -> None:
    folder = _copy(msmt[0], tmp_path / "MSMT17_V1")
    (folder / "list_train.txt").unlink()
    (folder / "list_val.txt").unlink()
    rows = load("msmt17", folder).to_pylist()
    assert rows and not [r for r in rows if r["split"] == "train"]
