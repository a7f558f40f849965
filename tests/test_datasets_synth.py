"""The built-in synthetic dataset: reproducible, reused when complete, and a real ReID problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidray.datasets import discover, load
from reidray.datasets.synth import MARKER, generate
from reidray.datasets.synth.world import World
from reidray.errors import DatasetLayoutError, ReidrayError

SMALL = {"n_ids": 8, "n_cams": 3, "n_train_ids": 2}


def test_generate_writes_the_registered_market_layout(tmp_path: Path) -> None:
    folder = generate(tmp_path, **SMALL)
    assert folder == tmp_path / "reidray-synth"
    assert discover(tmp_path) == {"reidray-synth": folder}
    table = load("reidray-synth", tmp_path)
    marker = json.loads((folder / MARKER).read_text())
    assert marker["images"] == table.num_rows
    rows = table.to_pylist()
    query = [r for r in rows if r["split"] == "query"]
    gallery = [r for r in rows if r["split"] == "gallery" and not r["is_junk"] and not r["is_distractor"]]
    assert len({r["pid"] for r in query}) == 8 and {r["camid"] for r in rows} == {0, 1, 2}
    # every query has a true match in another camera, so nothing is skipped by the Market rule
    for q in query:
        assert any(g["pid"] == q["pid"] and g["camid"] != q["camid"] for g in gallery)
    image = Image.open(rows[0]["path"])
    assert image.size == (64, 128) and image.format == "JPEG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_generate_reuses_a_complete_folder_and_redoes_a_different_one(tmp_path: Path) -> None:
    folder = generate(tmp_path, **SMALL)
    stamp = (folder / MARKER).stat().st_mtime_ns
    assert generate(tmp_path, **SMALL) == folder
    assert (folder / MARKER).stat().st_mtime_ns == stamp
    generate(tmp_path, **{**SMALL, "seed": 3})
    assert json.loads((folder / MARKER).read_text())["seed"] == 3


def test_generate_never_overwrites_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "reidray-synth").mkdir()
    (tmp_path / "reidray-synth" / "mine.txt").write_text("user data")
    with pytest.raises(DatasetLayoutError, match="not written by reidray"):
        generate(tmp_path, **SMALL)
    assert (tmp_path / "reidray-synth" / "mine.txt").exists()


def test_too_small_a_request_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReidrayError, match="n_cams >= 2"):
        generate(tmp_path, n_ids=4, n_cams=1)
    assert not list(tmp_path.iterdir())


def test_rendering_is_deterministic_and_varied() -> None:
    a, b = World(4, 3, seed=5), World(4, 3, seed=5)
    assert np.array_equal(a.person(2, 1, 7), b.person(2, 1, 7))
    assert not np.array_equal(a.person(2, 1, 7), World(4, 3, seed=6).person(2, 1, 7))
    assert not np.array_equal(a.person(2, 1, 7), a.person(2, 1, 8))
    assert a.person(0, 0, 0).shape == (128, 64, 3) and a.person(0, 0, 0).dtype == np.uint8


def _map(features: np.ndarray, pids: np.ndarray, cams: np.ndarray, is_query: np.ndarray) -> float:
    """Market-rule mAP, written independently of reidray.score."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    qf, gf = f[is_query], f[~is_query]
    qp, qc, gp, gc = pids[is_query], cams[is_query], pids[~is_query], cams[~is_query]
    aps = []
    for i in range(len(qf)):
        keep = ~((gp == qp[i]) & (gc == qc[i]))
        match = gp[keep][np.argsort(-(gf[keep] @ qf[i]), kind="stable")] == qp[i]
        if match.any():
            aps.append((np.cumsum(match)[match] / (np.flatnonzero(match) + 1)).mean())
    return float(np.mean(aps))


def _colour_baseline(paths: list[str]) -> np.ndarray:
    """Hue/saturation/value histograms in 8 horizontal stripes of the person-centred columns,
    after grey-world illumination normalisation: the kind of hand-made feature that should work."""
    feats = []
    for p in paths:
        x = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)[8:120, 20:44]
        x = np.clip(x / (x.mean((0, 1)) + 1) * 115, 0, 255).astype(np.uint8)
        hsv = np.asarray(Image.fromarray(x).convert("HSV"), dtype=np.int64)
        code = np.where(hsv[..., 1] < 51, 24 + hsv[..., 2] * 3 // 256, hsv[..., 0] * 8 // 256 * 3 + hsv[..., 1] * 3 // 256)
        feats.append(np.concatenate([np.bincount(s.ravel(), minlength=27) for s in np.array_split(code, 8)]))
    return np.sqrt(np.asarray(feats, dtype=np.float64))


def test_colour_baseline_works_and_random_features_do_not(tmp_path: Path) -> None:
    generate(tmp_path, n_ids=30, n_cams=4, n_train_ids=0, seed=0)
    rows = [r for r in load("reidray-synth", tmp_path).to_pylist() if r["split"] != "train" and not r["is_junk"]]
    pids = np.array([r["pid"] for r in rows])
    cams = np.array([r["camid"] for r in rows])
    is_query = np.array([r["split"] == "query" for r in rows])
    good = _map(_colour_baseline([r["path"] for r in rows]), pids, cams, is_query)
    chance = _map(np.random.default_rng(0).normal(size=(len(rows), 64)), pids, cams, is_query)
    assert good > 0.4, good
    assert chance < 0.2, chance
