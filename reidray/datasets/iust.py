"""IUST_PersonReID ("IUSReID", Moghaddam et al. 2025).

Layout: `IUSTPersonReID/{bounding_box_train, query, bounding_box_test}/0001_c1_s1_000151.jpg`
(Market-style names, see `market_style`; camera numbers may have two digits and, per the
dataset's README, repeat across recording sites). pid -1 is flagged junk (the dataset authors'
loader skips it). No source states the query/gallery sizes, so none are checked; the release
holds 117,455 images of 1,847 identities in all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from reidray.datasets import market_style
from reidray.datasets.spec import DatasetSpec
from reidray.datasets.synth import plan
from reidray.datasets.synth.world import World


def parse(dataset_dir: Path) -> pa.Table:
    """The manifest of an IUST_PersonReID folder, junk (-1) flagged."""
    return market_style.parse(dataset_dir, dataset="iust", junk_ids=frozenset({market_style.JUNK_PID}))


def write_synthetic(dest: Path, world: World, rng: np.random.Generator, *, n_ids: int, n_train_ids: int) -> list[dict]:
    """Write a synthetic IUST release (junk -1 boxes; cameras >= 10 get two digits)."""
    shots = plan.market_like(n_ids, n_train_ids, len(world.cameras), rng, distractors=0)
    files = []
    for shot, frame in zip(shots, plan.frames(shots, rng)):
        ident = "-1" if shot.is_junk else f"{shot.pid:04d}"
        files.append((shot, f"{market_style.FOLDERS[shot.split]}/{ident}_c{shot.cam + 1}_s1_{frame:06d}.jpg", {}))
    return world.save_all(dest, files)


SPEC = DatasetSpec(
    name="iust",
    title="IUST_PersonReID",
    folders=("IUSTPersonReID", "IUSReID"),  # IUST_PersonReID too: names compare without punctuation
    protocol="market",
    parse=parse,
    looks_like=market_style.looks_like,
    note="117,455 images, 1,847 identities in all; per-split sizes are not published",
)
