"""PKU-Reid (PKUv1a): 114 identities x 2 cameras x 8 orientations, 128x48 crops.

Layout: `PKU-Reid-Dataset/PKUv1a_128x48/*.png`, one flat folder (the folder itself, or a parent
holding it, may be the root). Name `personId_cameraId_orientationId.png`, e.g. `001_01_1.png`:
pid = field 1, camid = field 2 - 1.

The release has no split. This module's split is deterministic and does not depend on the
order in which the file system lists files:
  * identities sorted by pid; the first half (57 of 114) train, the rest test (the study's rule);
  * protocol="cross_camera" (default): for each test identity, the images of its lower-numbered
    camera are queries and those of its other camera the gallery (456 / 456 images). A test
    identity seen by one camera only goes entirely to the gallery.
  * protocol="half": for each test identity, its files sorted by name, the first half are
    queries and the rest the gallery: the study's rule, made reproducible.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from reidray.datasets import layout, manifest
from reidray.datasets.spec import Counts, DatasetSpec
from reidray.datasets.synth import plan
from reidray.datasets.synth.world import World
from reidray.errors import DatasetLayoutError, ReidrayError

NAME = "pku"
IMAGES = "PKUv1a_128x48"
PATTERN = re.compile(r"^(\d+)_(\d+)_(\d+)\.")
PROTOCOLS = ("cross_camera", "half")


def _image_dir(folder: Path) -> Path | None:
    if layout.norm(folder.name) == layout.norm(IMAGES):
        return folder
    return layout.child(folder, IMAGES, kind="dir")


def looks_like(folder: Path) -> bool:
    return _image_dir(folder) is not None


def parse_name(path: Path) -> tuple[int, int]:
    """(pid, 0-based camid) of `001_01_1.png`."""
    m = PATTERN.match(path.name)
    if m is None or int(m.group(2)) < 1:
        raise DatasetLayoutError(
            f"{NAME}: file name {path.name!r} ({path}) is not '<pid>_<camera>_<orientation>.png'; "
            "remove files that are not part of PKU-Reid"
        )
    return int(m.group(1)), int(m.group(2)) - 1


def parse(dataset_dir: Path, *, protocol: str = "cross_camera") -> pa.Table:
    """The manifest of a PKU-Reid folder with this module's deterministic split."""
    if protocol not in PROTOCOLS:
        raise ReidrayError(f"{NAME}: protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    image_dir = _image_dir(dataset_dir)
    if image_dir is None:
        raise DatasetLayoutError(f"{NAME}: {IMAGES} not found in {dataset_dir}; unpack PKU-Reid-Dataset there")
    by_pid: dict[int, list[tuple[Path, int]]] = defaultdict(list)
    for path in layout.images(image_dir):  # sorted by name
        pid, camid = parse_name(path)
        by_pid[pid].append((path, camid))
    pids = sorted(by_pid)
    n_train = len(pids) // 2
    rows = manifest.Rows(dataset_dir)
    for rank, pid in enumerate(pids):
        images = by_pid[pid]
        for i, (path, camid) in enumerate(images):
            if rank < n_train:
                split = "train"
            elif protocol == "half":
                split = "query" if i < len(images) // 2 else "gallery"
            else:
                cams = sorted({c for _, c in images})
                split = "query" if len(cams) > 1 and camid == cams[0] else "gallery"
            rows.add(path, pid, camid, split)
    return manifest.build(rows, NAME)


def write_synthetic(dest: Path, world: World, rng: np.random.Generator, *, n_ids: int, n_train_ids: int) -> list[dict]:
    """Write a synthetic PKU-Reid release: every identity in 2 cameras x 8 orientations, 128x48
    PNGs, in one flat folder, plus a readme that is not an image."""
    n_cams = len(world.cameras)
    files = []
    total = n_ids + n_train_ids
    for rank, ident in enumerate(rng.permutation(total)):
        pid = rank + 1  # the labels are sorted in the order identities were drawn: rank < n_train is train
        cams = sorted(rng.choice(n_cams, size=2, replace=False))
        for cam_number, cam in enumerate(cams, start=1):
            for orientation in range(1, 9):
                shot = plan.Shot(int(ident), pid, int(cam), "", orientation + 10 * cam_number)
                split = ("train" if rank < total // 2 else ("query" if cam_number == 1 else "gallery"))
                files.append((shot, f"{IMAGES}/{pid:03d}_{cam_number:02d}_{orientation}.png",
                              {"camid": cam_number - 1, "split": split}))
    truth = world.save_all(dest, files, size=(128, 48))
    (dest / "README.txt").write_text("synthetic PKU-Reid\n")
    return truth


SPEC = DatasetSpec(
    name=NAME,
    title="PKU-Reid",
    folders=("pku",),  # PKU-Reid-Dataset, PKUv1a_128x48, pku-reid ...
    protocol="market",
    parse=parse,
    looks_like=looks_like,
    official={
        "query": Counts(456, 57, 2),
        "gallery": Counts(456, 57, 2),
        "train": Counts(912, 57, 2),
    },
    note="no official split: query/gallery are this module's deterministic cross-camera split",
)
