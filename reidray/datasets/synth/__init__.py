"""reidray-synth: a built-in, procedurally drawn ReID dataset, so the whole flow runs with no download.

`generate(root)` writes the Market-1501 layout under `<root>/reidray-synth/` (the registered
dataset `reidray-synth`, read by the Market-1501 parser). With `layout=<dataset name>` it writes
that dataset's release layout instead, under the release's usual folder name, for testing the
parsers. A folder is written to a temporary name, completed with a marker file, then renamed:
an existing folder with a matching marker is reused, never half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from reidray.config import SYNTHETIC
from reidray.datasets.synth.world import World
from reidray.errors import DatasetLayoutError, ReidrayError, UnknownNameError

FOLDER = SYNTHETIC  # the folder is named after the dataset
MARKER = f".{SYNTHETIC}.json"
VERSION = 2  # bump when the drawing or a layout changes, so old folders are regenerated
# Sizes of the default drawing, measured (100 + 50 ids, 6 cameras: 1,488 images, 2.47 MB on disk);
# memory is the writer's record of each image and its manifest row, roughly.
IMAGES_PER_ID_AND_CAMERA = 1.7
DISK_BYTES_PER_IMAGE = 1_700
MEMORY_BYTES_PER_IMAGE = 1_000


def _writers() -> dict:
    """layout name -> (folder name, writer); each writer lives beside its dataset's parser
    (imported here, not at the top: those modules import this package's world and plan)."""
    from functools import partial

    from reidray.datasets import celebreid, cuhk03, dukemtmcreid, grid, iust, last, market1501, msmt17, pku

    return {
        "market1501": (FOLDER, market1501.write_synthetic),
        "dukemtmcreid": ("DukeMTMC-reID", dukemtmcreid.write_synthetic),
        "msmt17": ("MSMT17_V1", msmt17.write_synthetic),
        "msmt17-v2": ("MSMT17_V2", partial(msmt17.write_synthetic, version=2)),
        "cuhk03": ("cuhk03", cuhk03.write_synthetic),
        "cuhk03-np": ("cuhk03-np", cuhk03.write_synthetic_packaged),
        "grid": ("underground_reid", grid.write_synthetic),
        "celebreid": ("Celeb-reID", celebreid.write_synthetic),
        "pku": ("PKU-Reid-Dataset", pku.write_synthetic),
        "last": ("last", last.write_synthetic),
        "iust": ("IUSTPersonReID", iust.write_synthetic),
    }


def layouts() -> list[str]:
    """The layouts `generate` can write."""
    return sorted(_writers())


def _writer(layout: str) -> tuple:
    writers = _writers()
    if layout not in writers:
        raise UnknownNameError("synthetic layout", layout, list(writers))
    return writers[layout]


def write_layout(
    dest: Path, layout: str, *, n_ids: int, n_cams: int, n_train_ids: int, seed: int
) -> list[dict]:
    """Write `layout` into the folder `dest` and return what was written, one dict per image
    (image_id, pid, camid, split, is_junk, is_distractor and any layout-specific keys)."""
    write = _writer(layout)[1]
    if n_ids < 2 or n_cams < 2 or n_train_ids < 0:
        raise ReidrayError(
            f"synthetic dataset: need n_ids >= 2, n_cams >= 2 and n_train_ids >= 0 (got {n_ids}, {n_cams}, {n_train_ids})"
        )
    world = World(n_train_ids + n_ids, n_cams, seed)
    rng = np.random.default_rng([seed, 99])  # the writer's own choices, apart from the drawing
    return write(Path(dest), world, rng, n_ids=n_ids, n_train_ids=n_train_ids)


def generate(
    root: str | Path,
    *,
    n_ids: int = 100,
    n_cams: int = 6,
    seed: int = 0,
    layout: str = "market1501",
    n_train_ids: int | None = None,
) -> Path:
    """Write (or reuse) a synthetic dataset under `root` and return its folder.

    `n_ids` test identities (query + gallery) and `n_train_ids` (default n_ids // 2) disjoint
    train identities, seen by `n_cams` cameras. The default (100 + 50 ids, 6 cameras) is
    ~1.5k images, written in a few seconds.
    """
    n_train_ids = n_ids // 2 if n_train_ids is None else n_train_ids
    params = {"version": VERSION, "layout": layout, "n_ids": n_ids, "n_cams": n_cams,
              "n_train_ids": n_train_ids, "seed": seed}
    root = Path(root)
    dest = root / _writer(layout)[0]
    if _complete(dest, params):
        return dest
    problem = size_problem(root, n_ids=n_ids, n_cams=n_cams, n_train_ids=n_train_ids)
    if problem:
        raise ReidrayError(problem)
    if dest.exists() and not (dest / MARKER).exists():
        raise DatasetLayoutError(
            f"{dest} exists but was not written by reidray's generator; "
            "move it away or generate into another root"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        truth = write_layout(tmp, layout, n_ids=n_ids, n_cams=n_cams, n_train_ids=n_train_ids, seed=seed)
        (tmp / MARKER).write_text(json.dumps({**params, "images": len(truth)}))
        if dest.exists():  # ours (it has a marker) but made with other parameters
            shutil.rmtree(dest)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not _complete(dest, params):  # someone else finished first, and differently
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def size_problem(root: Path, *, n_ids: int, n_cams: int, n_train_ids: int) -> str | None:
    """Why a dataset of this size cannot be written under ``root``: the estimate of its images,
    disk and memory beside what this machine has free (checked before anything is drawn)."""
    images = (n_ids + n_train_ids) * n_cams * IMAGES_PER_ID_AND_CAMERA
    disk, memory = images * DISK_BYTES_PER_IMAGE, images * MEMORY_BYTES_PER_IMAGE
    existing = next(p for p in (root, *root.parents) if p.exists())
    free_disk = shutil.disk_usage(existing).free
    free_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    if disk <= free_disk and memory <= free_memory:
        return None
    return (f"synthetic dataset of {n_ids:,} ids x {n_cams} cameras is about {images:,.0f} images, "
            f"{disk / 1e9:,.1f} GB on disk ({free_disk / 1e9:,.1f} GB free under {existing}) and "
            f"{memory / 1e9:,.1f} GB of memory ({free_memory / 1e9:,.1f} GB free); lower synthetic.n_ids")


def _complete(dest: Path, params: dict) -> bool:
    """True if `dest` holds a finished synthetic dataset made with exactly `params`."""
    try:
        found = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return {k: found.get(k) for k in params} == params
