"""GRID (QMUL underground Re-ID), with its 10 trials.

Layout: `underground_reid/{probe, gallery}/*.jpeg` and `underground_reid/features_and_partitions.mat`
(torchreid's `grid/underground_reid/...` is found too). Name `0005_2_25100_229_94_99_249.jpeg`:
pid = field 1, camid = field 2 - 1 (8 cameras). pid 0000 marks the 775 unpaired gallery images.

Manifest: probe images are split "query", gallery images "gallery". The 10 trials of the
standard protocol come from `trainIdxAll` in the .mat file (per trial, 125 training identities:
the third field of each trial's struct). Column `grid_trials` (list<int8>) lists the trials
0..9 in which the image is in the test set: a paired identity's images in the trials where it is
not training, and the distractors (pid 0, flagged is_distractor) in every trial, as negatives
in every trial's gallery. Per trial: 125 queries against 125 + 775 = 900 gallery images; report
the mean over the trials.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.io

from reidray.datasets import layout, manifest
from reidray.datasets.spec import Counts, DatasetSpec
from reidray.datasets.synth import plan
from reidray.datasets.synth.world import World
from reidray.errors import DatasetLayoutError

NAME = "grid"
SPLIT_FILE = "features_and_partitions.mat"
N_TRIALS = 10
PATTERN = re.compile(r"^(\d+)_(\d+)_")
TRIALS_COLUMN = pa.schema([pa.field("grid_trials", pa.list_(pa.int8()), nullable=False)])


def looks_like(folder: Path) -> bool:
    return bool(layout.child(folder, "probe", kind="dir") and layout.child(folder, "gallery", kind="dir"))


def parse_name(path: Path) -> tuple[int, int]:
    """(pid, 0-based camid) of `0005_2_25100_229_94_99_249.jpeg`."""
    m = PATTERN.match(path.name)
    if m is None or int(m.group(2)) < 1:
        raise DatasetLayoutError(
            f"{NAME}: file name {path.name!r} ({path}) is not '<pid>_<camera>_...jpeg'; "
            "remove files that are not part of GRID"
        )
    return int(m.group(1)), int(m.group(2)) - 1


def read_trials(mat_path: Path) -> list[set[int]]:
    """The training identities of each of the 10 trials, from `trainIdxAll`."""
    broken = f"{NAME}: {mat_path} is not GRID's partition file; get {SPLIT_FILE} from underground_reid.zip"
    try:
        entries = scipy.io.loadmat(str(mat_path))["trainIdxAll"].ravel()
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise DatasetLayoutError(f"{broken} ({exc})") from None
    if len(entries) != N_TRIALS:
        raise DatasetLayoutError(f"{broken} (trainIdxAll has {len(entries)} trials, expected {N_TRIALS})")
    trials = []
    for entry in entries:
        record = entry
        while isinstance(record, np.ndarray) and record.dtype == object:  # a cell around the struct
            record = record.ravel()[0]
        if isinstance(record, np.ndarray) and record.dtype.names:  # a 1x1 struct array
            record = record.ravel()[0]
        try:
            ids = np.asarray(record[2]).ravel().astype(np.int64)
        except (IndexError, TypeError, ValueError):
            raise DatasetLayoutError(f"{broken} (a trial has no third field of training indices)") from None
        trials.append(set(ids.tolist()))
    return trials


def parse(dataset_dir: Path) -> pa.Table:
    """The manifest of an underground_reid folder, with per-image trial membership."""
    probe = layout.require(dataset_dir, "probe", dataset=NAME)
    gallery = layout.require(dataset_dir, "gallery", dataset=NAME)
    split_file = layout.require(dataset_dir, SPLIT_FILE, dataset=NAME, kind="file",
                                hint=f"get {SPLIT_FILE} from underground_reid.zip and put it in {dataset_dir}")
    trains = read_trials(split_file)
    rows = manifest.Rows(dataset_dir, TRIALS_COLUMN)
    paired = set()
    for split, folder in (("query", probe), ("gallery", gallery)):
        for path in layout.images(folder):
            pid, camid = parse_name(path)
            distractor = pid == 0
            paired.update({pid} - {0})
            trials = list(range(N_TRIALS)) if distractor else [t for t, train in enumerate(trains) if pid not in train]
            rows.add(path, pid, camid, split, is_distractor=distractor, grid_trials=trials)
    unknown = set().union(*trains) - paired
    if unknown:
        raise DatasetLayoutError(
            f"{NAME}: {SPLIT_FILE} names training identities with no image (e.g. {min(unknown)}); "
            "the probe/gallery folders are incomplete or belong to another release"
        )
    return manifest.build(rows, NAME)


def write_synthetic(dest: Path, world: World, rng: np.random.Generator, *, n_ids: int, n_train_ids: int) -> list[dict]:
    """Write a synthetic GRID release: `n_ids + n_train_ids` paired identities (one probe and one
    gallery image, in different cameras), three times as many 0000 distractors, .jpeg files and
    a partition .mat with 10 trials of half the identities each."""
    n_cams, total = len(world.cameras), n_ids + n_train_ids
    order = rng.permutation(total)
    trains = [np.sort(rng.choice(total, size=total // 2, replace=False)) + 1 for _ in range(N_TRIALS)]
    files = []
    for pid in range(1, total + 1):
        ident = int(order[pid - 1])
        cams = rng.choice(n_cams, size=2, replace=False)
        trials = [t for t in range(N_TRIALS) if pid not in trains[t]]
        for split, cam in zip(("query", "gallery"), cams):
            shot = plan.Shot(ident, pid, int(cam), split, pid * 2 + (split == "gallery"))
            files.append((shot, f"{'probe' if split == 'query' else 'gallery'}/{_name(pid, int(cam), shot.shot, rng)}",
                          {"grid_trials": trials}))
    for k in range(3 * total):
        shot = plan.Shot(-1, plan.DISTRACTOR, int(rng.integers(n_cams)), "gallery", 10**6 + k)
        files.append((shot, f"gallery/{_name(0, shot.cam, k, rng)}", {"grid_trials": list(range(N_TRIALS))}))
    truth = world.save_all(dest, files)
    # a 1x10 cell of 1x1 structs whose third field holds the training identities, as torchreid
    # reads the release (the other field names here are made up; readers go by position)
    cell = np.empty((1, N_TRIALS), dtype=object)
    for t, train in enumerate(trains):
        cell[0, t] = {"idxProbe": train.reshape(1, -1), "idxGallery": train.reshape(1, -1),
                      "idxTrain": train.reshape(1, -1).astype(np.float64)}
    scipy.io.savemat(str(dest / SPLIT_FILE), {"trainIdxAll": cell})
    return truth


def _name(pid: int, cam: int, serial: int, rng: np.random.Generator) -> str:
    """A GRID-like name; `serial` as the frame field keeps names unique."""
    numbers = "_".join(str(int(x)) for x in rng.integers(1, 300, size=4))
    return f"{pid:04d}_{cam + 1}_{serial}_{numbers}.jpeg"


SPEC = DatasetSpec(
    name=NAME,
    title="GRID",
    folders=("underground_reid", "grid"),
    protocol="grid",
    parse=parse,
    looks_like=looks_like,
    official={"query": Counts(250, 250, 8), "gallery": Counts(1025, 250, 8)},
    note="10 trials (column grid_trials): per trial 125 queries vs 125 + 775 distractor gallery images",
)
