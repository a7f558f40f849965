"""Market-1501 parser and the shared Market-style naming, on hand-written and synthetic layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from reidray.datasets import discover, load, market_style, summarize, summary_lines
from reidray.datasets.synth import write_layout
from reidray.errors import DatasetLayoutError


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # the parser never decodes images


@pytest.mark.parametrize(
    "name, expected",
    [
        ("0001_c1s1_001051_00.jpg", (1, 0)),  # Market-1501
        ("-1_c3s2_000001_00.jpg", (-1, 2)),  # Market junk
        ("0000_c6s1_000231_04.jpg", (0, 5)),  # Market distractor
        ("0005_c2_f0046985.jpg", (5, 1)),  # DukeMTMC-reID
        ("0003_c1_22.png", (3, 0)),  # packaged CUHK03-NP
        ("0001_c12_s1_000151.jpg", (1, 11)),  # IUST, two-digit camera
    ],
)
def test_market_style_names(name: str, expected: tuple[int, int]) -> None:
    assert market_style.parse_name(Path("/x/0042_c9s9_000000_00") / name, dataset="t") == expected


@pytest.mark.parametrize("name", ["Thumbs_c1.jpg", "0001-c1s1.jpg", "0001_c0s1_000001_00.jpg"])
def test_malformed_name_names_the_file(name: str) -> None:
    with pytest.raises(DatasetLayoutError, match=name):
        market_style.parse_name(name, dataset="market1501")


def test_market_name_round_trip() -> None:
    assert market_style.market_name(1, 0, 1, 123) == "0001_c1s1_000123_00.jpg"
    assert market_style.market_name(-1, 5, 2, 7, 3) == "-1_c6s2_000007_03.jpg"
    assert market_style.parse_name(market_style.market_name(-1, 5, 2, 7, 3), dataset="t") == (-1, 5)


def _hand_written(root: Path) -> Path:
    # a parent folder that itself looks like a Market file name must not leak into pids/cameras
    ds = root / "7777_c5s1_000001_00" / "Market-1501-v15.09.15"
    for rel in [
        "query/0002_c1s1_000100_00.jpg",
        "query/0007_c2s1_000200_00.JPG",
        "bounding_box_test/0002_c2s1_000300_01.jpg",
        "bounding_box_test/0007_c1s1_000400_02.jpeg",
        "bounding_box_test/0007_c3s1_000401_02.png",
        "bounding_box_test/-1_c1s1_000500_01.jpg",
        "bounding_box_test/0000_c4s1_000600_03.jpg",
        "bounding_box_train/0001_c1s1_000001_01.jpg",
        "bounding_box_train/0003_c2s1_000002_01.jpg",
    ]:
        touch(ds / rel)
    touch(ds / "bounding_box_test" / "Thumbs.db")
    touch(ds / "readme.txt")
    return ds


def test_hand_written_market_layout(tmp_path: Path) -> None:
    ds = _hand_written(tmp_path)
    table = load("market1501", ds)
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert len(rows) == 9
    query = rows["query/0007_c2s1_000200_00.JPG"]
    assert (query["pid"], query["camid"], query["split"], query["is_junk"], query["is_distractor"]) == (
        7, 1, "query", False, False)
    junk = rows["bounding_box_test/-1_c1s1_000500_01.jpg"]
    assert (junk["pid"], junk["is_junk"], junk["is_distractor"], junk["split"]) == (-1, True, False, "gallery")
    distractor = rows["bounding_box_test/0000_c4s1_000600_03.jpg"]
    assert (distractor["pid"], distractor["camid"], distractor["is_distractor"]) == (0, 3, True)
    assert rows["bounding_box_test/0007_c3s1_000401_02.png"]["path"] == str(ds / "bounding_box_test/0007_c3s1_000401_02.png")
    assert sorted(r["split"] for r in rows.values()).count("train") == 2
    assert {r["pid"] for r in rows.values()} == {-1, 0, 1, 2, 3, 7}


def test_market_found_from_data_root_one_level_nested(tmp_path: Path) -> None:
    ds = _hand_written(tmp_path)
    data_root = ds.parent  # holds Market-1501-v15.09.15 directly
    assert discover(data_root) == {"market1501": ds}
    torchreid_style = tmp_path / "data"
    (torchreid_style / "MARKET1501").mkdir(parents=True)
    ds.rename(torchreid_style / "MARKET1501" / ds.name)
    assert load("market1501", torchreid_style).num_rows == 9


def test_missing_query_folder_is_one_clear_error(tmp_path: Path) -> None:
    ds = tmp_path / "Market-1501-v15.09.15"
    touch(ds / "bounding_box_test" / "0001_c1s1_000001_00.jpg")
    (ds / "query").mkdir()
    with pytest.raises(DatasetLayoutError, match="no query images"):
        load("market1501", tmp_path)


def test_malformed_file_stops_the_parse(tmp_path: Path) -> None:
    ds = _hand_written(tmp_path)
    touch(ds / "query" / "copy of 0002_c1s1_000100_00.jpg")
    with pytest.raises(DatasetLayoutError, match="copy of 0002"):
        load("market1501", ds)


def test_synthetic_market_layout_round_trip(tmp_path: Path) -> None:
    truth = write_layout(tmp_path / "m", "market1501", n_ids=6, n_cams=3, n_train_ids=3, seed=1)
    table = load("market1501", tmp_path / "m")
    keys = ["image_id", "pid", "camid", "split", "is_junk", "is_distractor"]
    got = sorted(tuple(r[k] for k in keys) for r in table.select(keys).to_pylist())
    assert got == sorted(tuple(t[k] for k in keys) for t in truth)
    assert any(t["is_junk"] for t in truth) and any(t["is_distractor"] for t in truth)


def test_summarize_calls_out_mismatches(tmp_path: Path) -> None:
    _hand_written(tmp_path)
    rows = summarize(tmp_path / "7777_c5s1_000001_00")
    by_split = {r["split"]: r for r in rows}
    assert by_split["query"]["images"] == 2 and by_split["query"]["official_images"] == 3368
    assert "images 2 != 3368 official" in by_split["query"]["mismatch"]
    assert by_split["gallery"]["junk"] == 1 and by_split["gallery"]["distractors"] == 1
    assert by_split["gallery"]["identities"] == 2  # junk and distractor labels are not identities
    text = "\n".join(summary_lines(tmp_path / "7777_c5s1_000001_00"))
    assert "MISMATCH: images 2 != 3368 official" in text and "not found: dukemtmcreid" in text
