"""CUHK03-NP from the original .mat release (HDF5) and from the packaged folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reidray.datasets import load
from reidray.datasets.cuhk03 import EXTRACTED, config_name
from reidray.datasets.synth import write_layout
from reidray.errors import DatasetLayoutError, ReidrayError

SMALL = {"n_ids": 4, "n_cams": 4, "n_train_ids": 2, "seed": 3}
KEYS = ["image_id", "pid", "camid", "split"]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    pytest.importorskip("h5py")
    folder = tmp_path_factory.mktemp("cuhk") / "cuhk03"
    return folder, write_layout(folder, "cuhk03", **SMALL)


def _rows(table) -> list[tuple]:
    return sorted(tuple(r[k] for k in KEYS) for r in table.to_pylist())


def test_labeled_variant_from_the_mat_release(release: tuple[Path, list[dict]], tmp_path: Path) -> None:
    folder = shutil.copytree(release[0], tmp_path / "cuhk03")
    truth = [t for t in release[1] if t["variant"] == "labeled"]
    table = load("cuhk03", tmp_path, variant="labeled")
    assert _rows(table) == sorted(tuple(t[k] for k in KEYS) for t in truth)
    query = [r for r in table.to_pylist() if r["split"] == "query"]
    assert sorted((r["pid"], r["camid"]) for r in query) == sorted(
        (pid, cam) for pid in {r["pid"] for r in query} for cam in (0, 1))  # one query per camera
    assert (folder / EXTRACTED / "images_labeled" / ".complete").exists()


def test_extraction_happens_once(release: tuple[Path, list[dict]], tmp_path: Path) -> None:
    folder = shutil.copytree(release[0], tmp_path / "cuhk03")
    first = load("cuhk03", folder)
    image = folder / EXTRACTED / "images_detected" / Path(first.column("image_id")[0].as_py()).name
    stamp = image.stat().st_mtime_ns
    (folder / "cuhk03_release" / "cuhk-03.mat").unlink()  # the release stays required
    with pytest.raises(DatasetLayoutError, match="cuhk-03.mat"):
        load("cuhk03", folder)
    shutil.copy(release[0] / "cuhk03_release" / "cuhk-03.mat", folder / "cuhk03_release")
    assert _rows(load("cuhk03", folder)) == _rows(first)
    assert image.stat().st_mtime_ns == stamp


def test_missing_protocol_file_says_where_to_get_it(release: tuple[Path, list[dict]], tmp_path: Path) -> None:
    folder = shutil.copytree(release[0], tmp_path / "cuhk03")
    (folder / config_name("detected")).unlink()
    with pytest.raises(DatasetLayoutError, match="person-re-ranking"):
        load("cuhk03", folder)


def test_not_an_hdf5_file(release: tuple[Path, list[dict]], tmp_path: Path) -> None:
    folder = shutil.copytree(release[0], tmp_path / "cuhk03")
    (folder / "cuhk03_release" / "cuhk-03.mat").write_bytes(b"MATLAB 5.0 MAT-file, not v7.3")
    with pytest.raises(DatasetLayoutError, match="MATLAB v7.3"):
        load("cuhk03", folder)
    assert not (folder / EXTRACTED / "images_detected").exists()  # nothing half-written stays


def test_packaged_release_is_preferred_and_variants_differ(tmp_path: Path) -> None:
    folder = tmp_path / "cuhk03-np"
    truth = write_layout(folder, "cuhk03-np", **SMALL)
    detected, labeled = load("cuhk03", folder), load("cuhk03", folder, variant="labeled")
    assert detected.num_rows == sum(t["variant"] == "detected" for t in truth)
    assert labeled.num_rows == sum(t["variant"] == "labeled" for t in truth)
    assert all(i.startswith("labeled/") for i in labeled.column("image_id").to_pylist())
    with pytest.raises(ReidrayError, match="variant"):
        load("cuhk03", folder, variant="classic")
