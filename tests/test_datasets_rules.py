"""Dataset-specific rules of Celeb-reID, LaST, PKU-Reid, IUST and DukeMTMC-reID, and discovery
of many releases under one data root, on small hand-written layouts."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from reidray.datasets import discover, load
from reidray.datasets.synth import write_layout
from reidray.errors import DatasetLayoutError, ReidrayError


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_celebreid_camid_is_the_image_index(tmp_path: Path) -> None:
    touch(tmp_path / "Celeb-reID", "query/12_3_1.jpg", "gallery/12_10_0.jpg", "gallery/12_31_1.png",
          "train/5_1_0.jpeg")
    rows = {r["image_id"]: r for r in load("celebreid", tmp_path).to_pylist()}
    assert [(r["pid"], r["camid"]) for r in rows.values()] == [(12, 3), (12, 10), (12, 31), (5, 1)]
    touch(tmp_path / "Celeb-reID", "gallery/holiday.jpg")
    with pytest.raises(DatasetLayoutError, match="holiday.jpg"):
        load("celebreid", tmp_path)


def test_last_has_no_cameras_and_reads_pids_from_basenames(tmp_path: Path) -> None:
    # the gallery folder name disagrees with the file: the basename wins
    touch(tmp_path / "LaST", "test/query/000123_000_00001_1000_01_000.jpg",
          "test/gallery/000999/000123_004_00002_1001_01_000.jpg",
          "test/gallery/000124/000124_004_00003_1002_01_000.jpg",
          "train/000001/000001_001_00004_1003_01_002.jpg",
          "val/query/000200_000_00005_1004_01_000.jpg", "val/gallery/000200/000200_001_00006_1005_01_000.jpg")
    rows = load("last", tmp_path).to_pylist()
    assert {r["camid"] for r in rows} == {-1}
    assert [(r["split"], r["pid"]) for r in rows] == [("query", 123), ("gallery", 124), ("gallery", 123), ("train", 1)]
    # clothes: the last field in train; val/test carry no clothes labels
    assert [r["clothes_id"] for r in rows] == [-1, -1, -1, 2]
    val = load("last", tmp_path, eval_set="val").to_pylist()
    assert [(r["split"], r["pid"]) for r in val if r["split"] != "train"] == [("query", 200), ("gallery", 200)]
    with pytest.raises(ReidrayError, match="eval_set"):
        load("last", tmp_path, eval_set="train")
    touch(tmp_path / "LaST", "train/000001/000001_extra.jpg")
    with pytest.raises(DatasetLayoutError, match="000001_extra.jpg"):
        load("last", tmp_path)


def test_last_synthetic_release_carries_train_clothes_ids(tmp_path: Path) -> None:
    """Real-layout synthetic names: train outfits come from the last name field, -1 elsewhere."""
    write_layout(tmp_path / "last", "last", n_ids=6, n_cams=3, n_train_ids=6, seed=1)
    table = load("last", tmp_path)
    assert table.schema.field("clothes_id").type == pa.int32()
    for row in table.to_pylist():
        field = int(Path(row["image_id"]).stem.rsplit("_", 1)[1])
        assert row["clothes_id"] == (field if row["split"] == "train" else -1), row["image_id"]
    train = [r["clothes_id"] for r in table.to_pylist() if r["split"] == "train"]
    assert len(set(train)) > 1  # several outfits, so a constant column would fail


def _pku(root: Path, n: int = 4) -> Path:
    folder = root / "PKU-Reid-Dataset" / "PKUv1a_128x48"
    # written in reverse order: the split must not depend on how files are listed
    for pid in range(n, 0, -1):
        for cam in (2, 1):
            touch(folder, *(f"{pid:03d}_{cam:02d}_{o}.png" for o in range(8, 0, -1)))
    touch(folder.parent, "README.txt")
    return folder


def test_pku_split_is_deterministic_and_cross_camera(tmp_path: Path) -> None:
    _pku(tmp_path)
    rows = load("pku", tmp_path).to_pylist()
    assert {r["pid"] for r in rows if r["split"] == "train"} == {1, 2}
    assert {(r["pid"], r["camid"]) for r in rows if r["split"] == "query"} == {(3, 0), (4, 0)}
    assert {(r["pid"], r["camid"]) for r in rows if r["split"] == "gallery"} == {(3, 1), (4, 1)}
    half = load("pku", tmp_path / "PKU-Reid-Dataset" / "PKUv1a_128x48", protocol="half").to_pylist()
    queries = sorted(r["image_id"] for r in half if r["split"] == "query" and r["pid"] == 3)
    assert queries == sorted(f"003_01_{o}.png" for o in range(1, 9))  # first half of the sorted names


def test_iust_two_digit_cameras_and_junk(tmp_path: Path) -> None:
    touch(tmp_path / "IUST_PersonReID", "query/0001_c12_s1_000151.jpg", "bounding_box_test/0001_c3_s1_000152.jpg",
          "bounding_box_test/-1_c3_s1_000153.jpg")
    rows = load("iust", tmp_path).to_pylist()
    assert [(r["pid"], r["camid"], r["is_junk"]) for r in rows] == [(1, 11, False), (-1, 2, True), (1, 2, False)]


def test_duke_flags_nothing(tmp_path: Path) -> None:
    touch(tmp_path / "dukemtmc-reid" / "DukeMTMC-reID", "query/0005_c2_f0046985.jpg",
          "bounding_box_test/0000_c1_f0000001.jpg", "bounding_box_test/0005_c1_f0000002.jpg")
    rows = load("dukemtmcreid", tmp_path).to_pylist()
    assert not any(r["is_junk"] or r["is_distractor"] for r in rows)
    assert [(r["pid"], r["camid"]) for r in rows] == [(5, 1), (0, 0), (5, 0)]


def test_discover_many_releases_with_case_and_nesting(tmp_path: Path) -> None:
    touch(tmp_path / "MARKET-1501-v15.09.15", "query/0001_c1s1_000001_00.jpg", "bounding_box_test/0001_c2s1_000001_00.jpg")
    touch(tmp_path / "dukemtmc-reid" / "DukeMTMC-reID", "query/0005_c2_f0046985.jpg", "bounding_box_test/0005_c1_f1.jpg")
    touch(tmp_path / "msmt17" / "MSMT17_V2", "list_query.txt", "mask_test_v2/0000/0000_000_01_0303morning_0015_0.jpg")
    touch(tmp_path / "grid" / "underground_reid", "probe/0001_1_1.jpeg", "gallery/0001_2_1.jpeg")
    _pku(tmp_path)
    touch(tmp_path / "unrelated" / "photos", "query/x.jpg", "bounding_box_test/y.jpg")
    found = discover(tmp_path)
    assert found == {
        "market1501": tmp_path / "MARKET-1501-v15.09.15",
        "dukemtmcreid": tmp_path / "dukemtmc-reid" / "DukeMTMC-reID",
        "msmt17": tmp_path / "msmt17" / "MSMT17_V2",
        "grid": tmp_path / "grid" / "underground_reid",
        "pku": tmp_path / "PKU-Reid-Dataset",
    }
