"""CUHK03 under the new protocol (CUHK03-NP: 767 train / 700 test identities), detected boxes
by default, `variant="labeled"` for the hand-drawn ones.

Two releases are read; when a folder holds both, the packaged one is used.

Packaged (`cuhk03-np/{detected,labeled}/{bounding_box_train,bounding_box_test,query}/0003_c1_22.png`):
Market-style names (see `market_style`), pid and camera from the basename.

Original (`cuhk03/cuhk03_release/cuhk-03.mat` plus `cuhk03/cuhk03_new_protocol_config_<variant>.mat`):
cuhk-03.mat is MATLAB v7.3 (HDF5, read with h5py): for each of the 5 camera pairs a 10 x n
cell of images per person (cells 1-5 from view 1, 6-10 from view 2, some empty). The images are
extracted once, as `<pair>_<person3>_<view>_<cell2>.png` (the names the protocol file lists), into
`reidray-extracted/images_<variant>/` under the dataset folder, atomically (a marker is written
last). The protocol file (classic .mat) gives `filelist`, `labels` and 1-based `train_idx`,
`query_idx`, `gallery_idx`: pid = `labels` (train labels are not renumbered), camid = the view
field of the name - 1.

Protocol: one query image per camera per test identity, Market rule, single split; not the
single-gallery-shot "CUHK03 metric" of the old 20-split protocol.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.io
from PIL import Image

from reidray.datasets import layout, manifest, market_style
from reidray.datasets.spec import Counts, DatasetSpec
from reidray.datasets.synth import plan
from reidray.datasets.synth.world import World
from reidray.errors import DatasetLayoutError, ReidrayError

NAME = "cuhk03"
VARIANTS = ("detected", "labeled")
RELEASE_DIR, RELEASE_MAT = "cuhk03_release", "cuhk-03.mat"
EXTRACTED = "reidray-extracted"
DONE = ".complete"
PROTOCOL_URL = "github.com/zhunzhong07/person-re-ranking (evaluation/data/CUHK03)"


def config_name(variant: str) -> str:
    return f"cuhk03_new_protocol_config_{variant}.mat"


def _packaged(folder: Path, variant: str) -> Path | None:
    found = layout.child(folder, variant, kind="dir")
    return found if found is not None and market_style.looks_like(found) else None


def looks_like(folder: Path) -> bool:
    return any(_packaged(folder, v) for v in VARIANTS) or bool(
        layout.child(folder, RELEASE_DIR, kind="dir") or layout.child(folder, config_name("detected"), kind="file")
    )


def parse(dataset_dir: Path, *, variant: str = "detected") -> pa.Table:
    """The manifest of a CUHK03 folder (packaged CUHK03-NP or the original .mat release)."""
    if variant not in VARIANTS:
        raise ReidrayError(f"{NAME}: variant must be 'detected' or 'labeled', not {variant!r}")
    rows = manifest.Rows(dataset_dir)
    packaged = _packaged(dataset_dir, variant)
    if packaged is not None:
        market_style.add_release(rows, packaged, dataset=NAME)
        return manifest.build(rows, NAME)
    config = layout.require(dataset_dir, config_name(variant), dataset=NAME, kind="file",
                            hint=f"get it from {PROTOCOL_URL} and put it in {dataset_dir}")
    release = layout.require(
        layout.require(dataset_dir, RELEASE_DIR, dataset=NAME, hint="unpack cuhk03_release.zip there"),
        RELEASE_MAT, dataset=NAME, kind="file", hint="unpack cuhk03_release.zip again",
    )
    image_dir = extract(release, variant, dataset_dir / EXTRACTED / f"images_{variant}")
    protocol = _read_protocol(config)
    names, labels = protocol["filelist"], protocol["labels"]
    for split, key in (("train", "train_idx"), ("query", "query_idx"), ("gallery", "gallery_idx")):
        for index in protocol[key]:
            path = image_dir / names[index]
            if not path.is_file():
                raise DatasetLayoutError(
                    f"{NAME}: {config.name} lists {names[index]}, which {release} does not hold; "
                    f"the protocol file and cuhk-03.mat do not match (remove {image_dir.parent} and re-download both)"
                )
            rows.add(path, int(labels[index]), _view(names[index], config) - 1, split)
    return manifest.build(rows, NAME)


def _view(name: str, source: Path) -> int:
    fields = name.split("_")
    if len(fields) != 4 or fields[2] not in ("1", "2"):
        raise DatasetLayoutError(f"{NAME}: {source.name} lists {name!r}, not '<pair>_<person>_<view>_<n>.png'")
    return int(fields[2])


def _read_protocol(config: Path) -> dict:
    """filelist (names), labels, and 0-based train/query/gallery indices of a protocol file."""
    try:
        mat = scipy.io.loadmat(str(config))
        names = [str(np.asarray(x).ravel()[0]) for x in mat["filelist"].ravel()]
        out: dict = {"filelist": names, "labels": mat["labels"].ravel().astype(np.int64)}
        for key in ("train_idx", "query_idx", "gallery_idx"):
            out[key] = mat[key].ravel().astype(np.int64) - 1
    except (OSError, ValueError, KeyError, IndexError, NotImplementedError) as exc:
        raise DatasetLayoutError(f"{NAME}: {config} is not a CUHK03-NP protocol file ({exc}); get it from {PROTOCOL_URL}") from None
    n = len(names)
    for key in ("train_idx", "query_idx", "gallery_idx"):
        if len(out[key]) and (out[key].min() < 0 or out[key].max() >= n):
            raise DatasetLayoutError(f"{NAME}: {config.name}: {key} points outside filelist ({n} names)")
    if len(out["labels"]) != n:
        raise DatasetLayoutError(f"{NAME}: {config.name}: {len(out['labels'])} labels for {n} file names")
    return out


def extract(release: Path, variant: str, out_dir: Path) -> Path:
    """Write the `variant` images of cuhk-03.mat as PNGs into `out_dir`, once."""
    if (out_dir / DONE).exists():
        return out_dir
    if out_dir.exists():
        raise DatasetLayoutError(f"{NAME}: {out_dir} exists but was not completed by reidray; remove it and retry")
    try:
        import h5py
    except ImportError:
        raise DatasetLayoutError(f"{NAME}: reading {release} (MATLAB v7.3) needs h5py: pip install h5py") from None
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        with h5py.File(release, "r") as mat:
            if variant not in mat:
                raise DatasetLayoutError(f"{NAME}: {release} has no {variant!r} images; download cuhk03_release.zip again")
            for pair, pair_ref in enumerate(mat[variant][()].ravel(), start=1):
                cells = mat[pair_ref][()]  # (10 images, n persons) of references
                for person in range(cells.shape[1]):
                    for cell in range(cells.shape[0]):
                        pixels = mat[cells[cell, person]][()]
                        if pixels.ndim != 3:  # MATLAB stores an empty cell as a 1-d placeholder
                            continue
                        view = 1 if cell < 5 else 2
                        name = f"{pair}_{person + 1:03d}_{view}_{cell + 1:02d}.png"
                        Image.fromarray(np.ascontiguousarray(pixels.T)).save(tmp / name)
        (tmp / DONE).write_text("")
        os.rename(tmp, out_dir)
    except OSError as exc:
        if (out_dir / DONE).exists():  # another process finished first
            return out_dir
        raise DatasetLayoutError(
            f"{NAME}: could not extract {release} into {out_dir} ({exc}); "
            "check that it is an intact MATLAB v7.3 file and that the folder is writable"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _people(world: World, rng: np.random.Generator, n_ids: int, n_train_ids: int) -> list[dict]:
    """Synthetic CUHK03 people: camera pair, number in the pair, label, and for each variant the
    cells (0-9) that hold an image; labeled sometimes has a box where detection failed."""
    people, total = [], n_ids + n_train_ids
    train = set(rng.choice(total, size=n_train_ids, replace=False).tolist())
    in_pair = [0] * 5
    for label, ident in enumerate(rng.permutation(total), start=1):
        pair = int(rng.integers(5))
        in_pair[pair] += 1
        detected = [c for view in (0, 5) for c in range(view, view + int(rng.integers(1, 6)))]
        extra = [c for c in range(10) if c not in detected and rng.random() < 0.05]
        people.append({"pair": pair + 1, "number": in_pair[pair], "label": label, "ident": int(ident),
                       "train": label - 1 in train, "cells": {"detected": detected, "labeled": sorted(detected + extra)}})
    return people


def _split(person: dict, cell: int, cells: list[int]) -> str:
    """New-protocol role of a cell: the first image of each view of a test person is a query."""
    if person["train"]:
        return "train"
    first = {min(c for c in cells if c < 5), min(c for c in cells if c >= 5)}
    return "query" if cell in first else "gallery"


def _cams(world: World, pair: int) -> tuple[int, int]:
    n = len(world.cameras)
    return (2 * pair - 2) % n, (2 * pair - 1) % n


def write_synthetic(dest: Path, world: World, rng: np.random.Generator, *, n_ids: int, n_train_ids: int) -> list[dict]:
    """Write a synthetic original CUHK03 release: cuhk-03.mat (HDF5 with MATLAB-style references,
    empty cells, varying box sizes) and both protocol files. Truth rows carry a `variant` key."""
    import h5py

    people = _people(world, rng, n_ids, n_train_ids)
    truth = []
    (dest / RELEASE_DIR).mkdir(parents=True, exist_ok=True)
    with h5py.File(dest / RELEASE_DIR / RELEASE_MAT, "w") as mat:
        refs = mat.create_group("#refs#")

        def store(data: np.ndarray) -> h5py.Reference:
            ds = refs.create_dataset(f"r{len(refs)}", data=data)
            if data.ndim == 1:
                ds.attrs["MATLAB_empty"] = np.uint8(1)
            return ds.ref

        for variant in VARIANTS:
            protocol: dict[str, list] = {"filelist": [], "labels": [], "camId": [], "train_idx": [], "query_idx": [], "gallery_idx": []}
            pair_refs = np.empty((1, 5), dtype=h5py.ref_dtype)
            for pair in range(1, 6):
                members = [p for p in people if p["pair"] == pair]
                grid = np.empty((10, len(members)), dtype=h5py.ref_dtype)
                for column, person in enumerate(members):
                    cams = _cams(world, pair)
                    for cell in range(10):
                        if cell not in person["cells"][variant]:
                            grid[cell, column] = store(np.zeros(2, dtype=np.uint64))
                            continue
                        view = 1 if cell < 5 else 2
                        split = _split(person, cell, person["cells"][variant])
                        shot = plan.Shot(person["ident"], person["label"], cams[view - 1], split, person["label"] * 10 + cell)
                        pixels = np.asarray(Image.fromarray(world.render(shot)).resize(
                            (int(rng.integers(40, 80)), int(rng.integers(100, 180)))))
                        grid[cell, column] = store(np.ascontiguousarray(pixels.T))
                        name = f"{pair}_{person['number']:03d}_{view}_{cell + 1:02d}.png"
                        protocol["filelist"].append(name)
                        protocol["labels"].append(person["label"])
                        protocol["camId"].append(view)
                        protocol[f"{split}_idx"].append(len(protocol["filelist"]))
                        truth.append({"image_id": f"{EXTRACTED}/images_{variant}/{name}", "pid": person["label"],
                                      "camid": view - 1, "split": split, "is_junk": False,
                                      "is_distractor": False, "variant": variant})
                pair_refs[0, pair - 1] = store(grid)
            mat.create_dataset(variant, data=pair_refs)
            filelist = np.empty((len(protocol["filelist"]), 1), dtype=object)
            filelist[:, 0] = protocol.pop("filelist")
            scipy.io.savemat(str(dest / config_name(variant)), {
                "filelist": filelist, **{k: np.asarray(v, dtype=np.float64).reshape(-1, 1) for k, v in protocol.items()}})
    return truth


def write_synthetic_packaged(dest: Path, world: World, rng: np.random.Generator, *, n_ids: int, n_train_ids: int) -> list[dict]:
    """Write a synthetic packaged CUHK03-NP release (`detected/` and `labeled/`, Market-style
    PNG names). Truth rows carry a `variant` key."""
    files = []
    for person in _people(world, rng, n_ids, n_train_ids):
        for variant in VARIANTS:
            cells = person["cells"][variant]
            for cell in cells:
                view = 1 if cell < 5 else 2
                split = _split(person, cell, cells)
                shot = plan.Shot(person["ident"], person["label"], _cams(world, person["pair"])[view - 1], split,
                                 person["label"] * 10 + cell)
                rel = f"{variant}/{market_style.FOLDERS[split]}/{person['label']:04d}_c{view}_{cell + 1}.png"
                files.append((shot, rel, {"camid": view - 1, "variant": variant}))
    return world.save_all(dest, files)


SPEC = DatasetSpec(
    name=NAME,
    title="CUHK03-NP",
    folders=("cuhk03",),
    protocol="market",
    parse=parse,
    looks_like=looks_like,
    official={
        "query": Counts(1400, 700, 2),
        "gallery": Counts(5332, 700, 2),
        "train": Counts(7365, 767, 2),
    },
    note="detected (default); labeled: 1,400 / 5,328 / 7,368 images",
)
