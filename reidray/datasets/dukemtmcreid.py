"""DukeMTMC-reID.

Layout: `DukeMTMC-reID/{bounding_box_train, bounding_box_test, query}/0005_c2_f0046985.jpg`
(torchreid's `dukemtmc-reid/DukeMTMC-reID/...` is found too). pid and camera (1-8) come from the
basename (see `market_style`). There is no junk (-1) or distractor (0000) label: the 408
distractor identities of the gallery have ordinary ids and appear in one camera only, so
nothing is flagged. The dataset was withdrawn by Duke; redistributed copies share this layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from reidray.datasets import market_style
from reidray.datasets.spec import Counts, DatasetSpec
from reidray.datasets.synth import plan
from reidray.datasets.synth.world import World


def parse(dataset_dir: Path) -> pa.Table:
    """The manifest of a DukeMTMC-reID folder."""
    return market_style.parse(dataset_dir, dataset="dukemtmcreid")


def write_synthetic(dest: Path, world: World, rng: np.random.Generator, *, n_ids: int, n_train_ids: int) -> list[dict]:
    """Write a synthetic DukeMTMC-reID release, with single-camera gallery-only identities."""
    shots = plan.market_like(n_ids, n_train_ids, len(world.cameras), rng, junk=0, distractors=0,
                             gallery_only=max(1, n_ids // 6))
    files = [
        (shot, f"{market_style.FOLDERS[shot.split]}/{shot.pid:04d}_c{shot.cam + 1}_f{frame:07d}.jpg", {})
        for shot, frame in zip(shots, plan.frames(shots, rng))
    ]
    return world.save_all(dest, files)


SPEC = DatasetSpec(
    name="dukemtmcreid",
    title="DukeMTMC-reID",
    folders=("DukeMTMC-reID", "dukemtmc"),
    protocol="market",
    parse=parse,
    looks_like=market_style.looks_like,
    official={
        "query": Counts(2228, 702, 8),
        "gallery": Counts(17661, 1110, 8),
        "train": Counts(16522, 702, 8),
    },
    note="gallery identities: 702 test ids + 408 single-camera distractor ids",
)
