"""Market-1501-style releases, shared by every dataset that uses them.

Naming: `0001_c1s1_001051_00.jpg` (Market-1501, reidray-synth), `0005_c2_f0046985.jpg`
(DukeMTMC-reID), `0003_c1_22.png` (packaged CUHK03-NP), `0001_c12_s1_000151.jpg` (IUST): a signed
identity, `_c`, then the 1-based camera number. Only the basename is parsed, never the parent
folders. Folders: `query/`, `bounding_box_test/` (the gallery) and optionally `bounding_box_train/`.
Which ids are junk or distractors is each dataset's rule, passed in by its module.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from reidray.datasets import layout, manifest
from reidray.errors import DatasetLayoutError

PATTERN = re.compile(r"^(-?\d+)_c(\d+)")
FOLDERS = {"query": "query", "gallery": "bounding_box_test", "train": "bounding_box_train"}
JUNK_PID = -1
DISTRACTOR_PID = 0


def parse_name(path: Path | str, *, dataset: str) -> tuple[int, int]:
    """(pid, 0-based camid) of a Market-style file name; malformed names raise, naming the file."""
    name = Path(path).name
    m = PATTERN.match(name)
    if m is None or int(m.group(2)) < 1:
        raise DatasetLayoutError(
            f"{dataset}: file name {name!r} ({path}) is not '<pid>_c<camera>...'; "
            "remove files that are not part of the dataset"
        )
    return int(m.group(1)), int(m.group(2)) - 1


def market_name(pid: int, cam: int, seq: int, frame: int, box: int = 0, ext: str = ".jpg") -> str:
    """Market-1501 file name of a 0-based camera: market_name(1, 0, 1, 123) = '0001_c1s1_000123_00.jpg'."""
    ident = "-1" if pid == JUNK_PID else f"{pid:04d}"
    return f"{ident}_c{cam + 1}s{seq}_{frame:06d}_{box:02d}{ext}"


def looks_like(folder: Path) -> bool:
    """A folder with `query/` and `bounding_box_test/`."""
    return all(layout.child(folder, FOLDERS[s], kind="dir") for s in ("query", "gallery"))


def parse(
    dataset_dir: Path,
    *,
    dataset: str,
    junk_ids: frozenset[int] = frozenset(),
    distractor_ids: frozenset[int] = frozenset(),
) -> pa.Table:
    """The manifest of a Market-style release (train is optional: evaluation needs only query
    and gallery)."""
    rows = manifest.Rows(dataset_dir)
    add_release(rows, dataset_dir, dataset=dataset, junk_ids=junk_ids, distractor_ids=distractor_ids)
    return manifest.build(rows, dataset)


def add_release(
    rows: manifest.Rows,
    folder: Path,
    *,
    dataset: str,
    junk_ids: frozenset[int] = frozenset(),
    distractor_ids: frozenset[int] = frozenset(),
) -> None:
    """Append the images of the Market-style release in `folder` (which may lie below the
    dataset folder, e.g. CUHK03-NP's `detected/`)."""
    for split, folder_name in FOLDERS.items():
        if split == "train":
            found = layout.child(folder, folder_name, kind="dir")
        else:
            found = layout.require(folder, folder_name, dataset=dataset)
        if found is None:
            continue
        for path in layout.images(found):
            pid, camid = parse_name(path, dataset=dataset)
            rows.add(path, pid, camid, split, is_junk=pid in junk_ids, is_distractor=pid in distractor_ids)
