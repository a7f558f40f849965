"""Celeb-reID (long-term, clothes-changing; images collected from the web).

Layout: `Celeb-reID/{train, query, gallery}/x_y_z.jpg` (the smaller `Celeb-reID-light` has the
same layout; pass its folder as the root when both are present). Per the dataset's readme,
x is the identity, y the index of the image within that identity and z meaningless. There are
no cameras; as the maintainer advises, camid = y, which differs for every image of a person,
so the Market rule removes nothing and every same-identity gallery image is a true match.
(The official loader kept only the first digit of y, which wrongly drops positives; the
study's loader used y - 1, merging y = 0 and y = 1.) pid -1, if present, is flagged junk.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from reidray.datasets import layout, manifest
from reidray.datasets.spec import Counts, DatasetSpec
from reidray.datasets.synth import plan
from reidray.datasets.synth.world import World
from reidray.errors import DatasetLayoutError

NAME = "celebreid"
PATTERN = re.compile(r"^(-?\d+)_(\d+)_")


def looks_like(folder: Path) -> bool:
    return bool(layout.child(folder, "query", kind="dir") and layout.child(folder, "gallery", kind="dir"))


def parse_name(path: Path) -> tuple[int, int]:
    """(pid, image index y) of `x_y_z.jpg`."""
    m = PATTERN.match(path.name)
    if m is None:
        raise DatasetLayoutError(
            f"{NAME}: file name {path.name!r} ({path}) is not '<identity>_<index>_<n>.jpg'; "
            "remove files that are not part of Celeb-reID"
        )
    return int(m.group(1)), int(m.group(2))


def parse(dataset_dir: Path) -> pa.Table:
    """The manifest of a Celeb-reID (or Celeb-reID-light) folder."""
    rows = manifest.Rows(dataset_dir)
    for split in ("query", "gallery", "train"):  # train is optional
        if split == "train":
            folder = layout.child(dataset_dir, split, kind="dir")
        else:
            folder = layout.require(dataset_dir, split, dataset=NAME)
        for path in layout.images(folder) if folder else []:
            pid, y = parse_name(path)
            rows.add(path, pid, y, split, is_junk=pid == -1)
    return manifest.build(rows, NAME)


def write_synthetic(dest: Path, world: World, rng: np.random.Generator, *, n_ids: int, n_train_ids: int) -> list[dict]:
    """Write a synthetic Celeb-reID release (mixed .jpg/.jpeg/.png extensions)."""
    shots = plan.market_like(n_ids, n_train_ids, len(world.cameras), rng, junk=0, distractors=0)
    seen: dict[int, int] = {}
    files = []
    for shot in shots:
        y = seen[shot.pid] = seen.get(shot.pid, 0) + 1
        ext = (".jpg", ".jpeg", ".png")[shot.shot % 3]
        files.append((shot, f"{shot.split}/{shot.pid}_{y}_{int(rng.integers(0, 2))}{ext}", {"camid": y}))
    return world.save_all(dest, files)


SPEC = DatasetSpec(
    name=NAME,
    title="Celeb-reID",
    folders=("Celeb-reID",),
    protocol="no-camera-filter",
    parse=parse,
    looks_like=looks_like,
    official={
        "query": Counts(2972, 420, None),
        "gallery": Counts(11006, 420, None),
        "train": Counts(20208, 632, None),
    },
    note="camid = per-identity image index (no cameras); Celeb-reID-light: 887 / 934 / 9,021 images",
)
