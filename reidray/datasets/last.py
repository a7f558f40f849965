"""LaST (Large-scale Spatio-Temporal person re-identification, Shu et al.).

Layout:

    last/train/<pid>/*.jpg         val/query/*.jpg    val/gallery/<pid>/*.jpg
                                   test/query/*.jpg   test/gallery/<pid>/*.jpg

Queries are flat, gallery and train images sit in per-identity folders. pid is the first `_`
field of the basename (`010903_012_01066_1075_01_000.jpg` -> 10903), never the folder name.
Column `clothes_id` (int32): in train, the last field (`000` -> 0), an outfit index within the
identity, so an outfit is the pair (pid, clothes_id) as in the official clothes loader; the
release labels no clothes in val/test, so their images get -1 rather than a made-up label.
Movie frames have no cameras: camid = -1 for every image, so the Market rule removes nothing
and every same-identity gallery image is a true match (the official protocol; the study's
loader gave flat queries camid = field 2, which silently drops all positives of `000` queries).
`eval_set="val"` evaluates the validation pair instead of the test pair.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from reidray.datasets import layout, manifest
from reidray.datasets.manifest import NO_CAMERA
from reidray.datasets.spec import Counts, DatasetSpec
from reidray.datasets.synth import plan
from reidray.datasets.synth.world import World
from reidray.errors import DatasetLayoutError, ReidrayError

NAME = "last"
PATTERN = re.compile(r"^(\d+)_")
CLOTHES = re.compile(r"_(\d+)$")  # on the stem
CLOTHES_COLUMN = pa.schema([pa.field("clothes_id", pa.int32(), nullable=False)])
NO_CLOTHES = -1  # val/test images: LaST releases no clothes labels there


def looks_like(folder: Path) -> bool:
    test = layout.child(folder, "test", kind="dir")
    return bool(test and layout.child(test, "query", kind="dir") and layout.child(test, "gallery", kind="dir"))


def _number(path: Path, found: re.Match | None, rule: str) -> int:
    """The number a name pattern captured; a file that breaks the naming rule is named."""
    if found is None:
        raise DatasetLayoutError(
            f"{NAME}: file name {path.name!r} ({path}) {rule}; remove files that are not part of LaST"
        )
    return int(found.group(1))


def parse(dataset_dir: Path, *, eval_set: str = "test") -> pa.Table:
    """The manifest of a LaST folder: train, plus the query and gallery of `eval_set`."""
    if eval_set not in ("test", "val"):
        raise ReidrayError(f"{NAME}: eval_set must be 'test' or 'val', not {eval_set!r}")
    rows = manifest.Rows(dataset_dir, CLOTHES_COLUMN)
    evaluation = layout.require(dataset_dir, eval_set, dataset=NAME)
    sources = [
        ("query", layout.require(evaluation, "query", dataset=NAME)),
        ("gallery", layout.require(evaluation, "gallery", dataset=NAME)),
    ]
    train = layout.child(dataset_dir, "train", kind="dir")
    if train is not None:
        sources.append(("train", train))
    for split, folder in sources:
        for path in layout.images(folder, recursive=split != "query"):
            pid = _number(path, PATTERN.match(path.name), "does not start with '<pid>_'")
            clothes = (_number(path, CLOTHES.search(path.stem), "(a training image) does not end in '_<clothes>'")
                       if split == "train" else NO_CLOTHES)
            rows.add(path, pid, NO_CAMERA, split, clothes_id=clothes)
    return manifest.build(rows, NAME)


def write_synthetic(dest: Path, world: World, rng: np.random.Generator, *, n_ids: int, n_train_ids: int) -> list[dict]:
    """Write a synthetic LaST release: flat queries, per-identity gallery and train folders,
    a small val pair."""
    shots = plan.market_like(n_ids, n_train_ids, len(world.cameras), rng, junk=0, distractors=0)
    n_val = max(2, n_ids // 5)  # the first few test identities form the val pair
    val_ids = {s.ident for s in shots if s.split == "query"}
    val_ids = set(sorted(val_ids)[:n_val])
    files = []
    for shot in shots:
        clothes = int(rng.integers(0, 3))
        name = f"{shot.pid:06d}_{shot.cam:03d}_{shot.shot:05d}_{int(rng.integers(1000, 9999))}_01_{clothes:03d}.jpg"
        if shot.split == "train":
            rel = f"train/{shot.pid:06d}/{name}"
        else:
            top = "val" if shot.ident in val_ids else "test"
            rel = f"{top}/query/{name}" if shot.split == "query" else f"{top}/gallery/{shot.pid:06d}/{name}"
        files.append((shot, rel, {"camid": NO_CAMERA, "eval_set": rel.split("/")[0],
                                  "clothes_id": clothes if shot.split == "train" else NO_CLOTHES}))
    return world.save_all(dest, files)


SPEC = DatasetSpec(
    name=NAME,
    title="LaST",
    folders=("last",),
    protocol="no-camera-filter",
    parse=parse,
    looks_like=looks_like,
    official={
        "query": Counts(10176, 5805, None),
        "gallery": Counts(125353, 5806, None),
        "train": Counts(71248, 5000, None),
    },
    note="no camera ids (camid -1): all same-identity gallery images are positives; "
    "column clothes_id: outfit within the identity, train only (-1 in val/test)",
)
