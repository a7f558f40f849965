"""MSMT17, versions 1 and 2.

Layout (V2 differs only in the two image folder names and in having faces blurred):

    MSMT17_V1/                      MSMT17_V2/
      train/<pid4>/*.jpg              mask_train_v2/<pid4>/*.jpg
      test/<pid4>/*.jpg               mask_test_v2/<pid4>/*.jpg
      list_train.txt  list_val.txt  list_query.txt  list_gallery.txt

Each list line is `<path under train|test> <pid>`, e.g. `0000/0000_000_01_0303morning_0015_0.jpg 0`;
query and gallery lines are relative to the test folder, train and val lines to the train
folder. pid is the list's second column; the camera is the third `_` field of the basename
(01-15), minus 1. Train and test pids are numbered independently, both from 0: a pid is
comparable only within train, or within query + gallery. The train split holds list_train and
list_val (32,621 images, the official train size).

The list files are required for query and gallery (some copies lack them: the error says so);
every listed file must exist: a missing one stops the parse instead of being skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from reidray.datasets import layout, manifest
from reidray.datasets.spec import Counts, DatasetSpec
from reidray.datasets.synth import plan
from reidray.datasets.synth.world import World
from reidray.errors import DatasetLayoutError

NAME = "msmt17"
VERSIONS = {1: ("train", "test"), 2: ("mask_train_v2", "mask_test_v2")}
LISTS = {"train": "list_train.txt", "val": "list_val.txt", "query": "list_query.txt", "gallery": "list_gallery.txt"}
GET_LISTS = "get the four list_*.txt files of the official MSMT17 release and put them in"


def _version(folder: Path) -> int | None:
    found = [v for v, dirs in VERSIONS.items() if any(layout.child(folder, d, kind="dir") for d in dirs)]
    if len(found) > 1:
        raise DatasetLayoutError(
            f"{NAME}: {folder} holds both V1 (train/, test/) and V2 (mask_train_v2/, mask_test_v2/) "
            "image folders; keep one version per folder"
        )
    return found[0] if found else None


def looks_like(folder: Path) -> bool:
    return bool(layout.child(folder, LISTS["query"], kind="file")) or _version(folder) is not None


def _read_list(list_path: Path, image_dir: Path) -> list[tuple[Path, int]]:
    """(image path, pid) per line; a malformed line or a missing image is an error."""
    entries, missing = [], []
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetLayoutError(
                f"{NAME}: {list_path.name} line {number} is {line!r}, expected '<relative path> <pid>'; "
                "the list file is damaged, get it again from the release"
            )
        path = image_dir / fields[0]
        if not path.is_file():
            missing.append(fields[0])
        entries.append((path, int(fields[1])))
    if missing:
        raise DatasetLayoutError(
            f"{NAME}: {len(missing)} image(s) listed in {list_path.name} are not in {image_dir} "
            f"(first: {missing[0]}); re-extract the image folder"
        )
    return entries


def _camid(path: Path) -> int:
    fields = path.name.split("_")
    if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) < 1:
        raise DatasetLayoutError(
            f"{NAME}: file name {path.name!r} has no camera field "
            "('<pid>_<index>_<camera>_<date><time>_...'); remove files that are not part of MSMT17"
        )
    return int(fields[2]) - 1


def parse(dataset_dir: Path) -> pa.Table:
    """The manifest of an MSMT17_V1 or MSMT17_V2 folder."""
    version = _version(dataset_dir)
    if version is None:
        raise DatasetLayoutError(f"{NAME}: no train/ and test/ (V1) or mask_train_v2/ and mask_test_v2/ (V2) in {dataset_dir}")
    train_name, test_name = VERSIONS[version]
    test_dir = layout.require(dataset_dir, test_name, dataset=NAME)
    rows = manifest.Rows(dataset_dir)
    for split in ("query", "gallery"):
        list_path = layout.require(dataset_dir, LISTS[split], dataset=NAME, kind="file",
                                   hint=f"{GET_LISTS} {dataset_dir}")
        for path, pid in _read_list(list_path, test_dir):
            rows.add(path, pid, _camid(path), split)
    train_lists = [layout.child(dataset_dir, LISTS[s], kind="file") for s in ("train", "val")]
    if any(train_lists):
        train_dir = layout.require(dataset_dir, train_name, dataset=NAME)
        for list_path in filter(None, train_lists):
            for path, pid in _read_list(list_path, train_dir):
                rows.add(path, pid, _camid(path), "train")
    return manifest.build(rows, NAME)


def write_synthetic(
    dest: Path, world: World, rng: np.random.Generator, *, n_ids: int, n_train_ids: int, version: int = 1
) -> list[dict]:
    """Write a synthetic MSMT17 release: per-identity folders (names that look like ids),
    list files, train and test pids both numbered from 0."""
    shots = plan.market_like(n_ids, n_train_ids, len(world.cameras), rng, junk=0, distractors=0)
    train_name, test_name = VERSIONS[version]
    # pids renumbered from 0 separately for train and test, as in the release
    renumber: dict[tuple[bool, int], int] = {}
    for shot in shots:
        key = (shot.split == "train", shot.ident)
        renumber.setdefault(key, sum(1 for k in renumber if k[0] == key[0]))
    lines: dict[str, list[str]] = {name: [] for name in LISTS}
    files = []
    per_person: dict[tuple[bool, int], int] = {}
    times = ("morning", "noon", "afternoon")
    for shot in shots:
        key = (shot.split == "train", shot.ident)
        pid = renumber[key]
        index = per_person[key] = per_person.get(key, -1) + 1
        name = f"{pid:04d}_{index:03d}_{shot.cam + 1:02d}_0{302 + shot.cam % 3}{times[index % 3]}_{shot.shot:04d}_{index % 2}.jpg"
        rel = f"{pid:04d}/{name}"
        if shot.split == "train":
            list_name = "val" if rng.random() < 0.1 else "train"
            files.append((shot, f"{train_name}/{rel}", {"pid": pid}))
        else:
            list_name = shot.split
            files.append((shot, f"{test_name}/{rel}", {"pid": pid}))
        lines[list_name].append(f"{rel} {pid}")
    truth = world.save_all(dest, files)
    for list_name, entries in lines.items():
        (dest / LISTS[list_name]).write_text("".join(f"{e}\n" for e in entries))
    return truth


SPEC = DatasetSpec(
    name=NAME,
    title="MSMT17",
    folders=("MSMT17",),
    protocol="market",
    parse=parse,
    looks_like=looks_like,
    official={
        "query": Counts(11659, 3060, 15),
        "gallery": Counts(82161, 3060, 15),
        "train": Counts(32621, 1041, 15),
    },
    note="train = list_train + list_val; train and test pids are separate numberings",
)
