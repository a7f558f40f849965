"""Market-1501 (and reidray-synth, which uses the same layout).

Layout: `Market-1501-v15.09.15/{bounding_box_train, bounding_box_test, query}/0001_c1s1_001051_00.jpg`
(torchreid's `market1501/Market-1501-v15.09.15/...` and a bare `market1501/...` are found too).
pid and camera come from the basename (see `market_style`). pid -1 marks junk boxes (flagged
`is_junk`: the protocol ignores them) and pid 0000 marks detector false alarms (flagged
`is_distractor`: negatives in the gallery). Nothing is dropped: the gallery holds all 19,732
images, 15,913 of them not junk. The optional 500k distractor set (`images/`) is not read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from reidray.datasets import market_style
from reidray.datasets.spec import Counts, DatasetSpec
from reidray.datasets.synth import plan
from reidray.datasets.synth.world import World

def parse(dataset_dir: Path, *, dataset: str = "market1501") -> pa.Table:
    """The manifest of a Market-1501-layout folder, junk (-1) and distractors (0000) flagged."""
    return market_style.parse(
        dataset_dir, dataset=dataset,
        junk_ids=frozenset({market_style.JUNK_PID}), distractor_ids=frozenset({market_style.DISTRACTOR_PID}),
    )


def write_synthetic(dest: Path, world: World, rng: np.random.Generator, *, n_ids: int, n_train_ids: int) -> list[dict]:
    """Write a synthetic Market-1501 release (junk -1 and distractor 0000 boxes included)."""
    shots = plan.market_like(n_ids, n_train_ids, len(world.cameras), rng)
    files = []
    for shot, frame in zip(shots, plan.frames(shots, rng)):
        box = 0 if shot.split == "query" else int(rng.integers(1, 4))
        name = market_style.market_name(shot.pid, shot.cam, 1 + frame // 5000, frame, box)
        files.append((shot, f"{market_style.FOLDERS[shot.split]}/{name}", {}))
    return world.save_all(dest, files)


SPEC = DatasetSpec(
    name="market1501",
    title="Market-1501",
    folders=("Market-1501", "market1501"),
    protocol="market",
    parse=parse,
    looks_like=market_style.looks_like,
    official={
        "query": Counts(3368, 750, 6),
        "gallery": Counts(19732, 750, 6),
        "train": Counts(12936, 751, 6),
    },
    note="gallery: 19,732 files = 15,913 scored (incl. 2,793 distractors 0000) + 3,819 junk (-1)",
)
