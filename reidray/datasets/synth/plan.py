"""Which identity each synthetic camera sees, how often, and which shots become queries.

Layout writers (in the dataset modules) turn these plans into their own folders and names,
so every layout gets the same ReID structure: disjoint train and test identities, each test
identity seen by at least two cameras, queries with a true match in another camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JUNK, DISTRACTOR = -1, 0


@dataclass(frozen=True)
class Shot:
    """One image to render: `ident` indexes World.identities (-1: a stranger), `pid` is the
    label to write (-1 junk, 0 distractor), `cam` is 0-based, `shot` makes it unique."""

    ident: int
    pid: int
    cam: int
    split: str
    shot: int

    @property
    def is_junk(self) -> bool:
        return self.pid == JUNK

    @property
    def is_distractor(self) -> bool:
        return self.pid == DISTRACTOR


def pids(n_total: int, rng: np.random.Generator) -> np.ndarray:
    """Labels 1..n_total in a random order: label[i] is the pid of identity i."""
    return rng.permutation(n_total) + 1


def market_like(
    n_ids: int,
    n_train_ids: int,
    n_cams: int,
    rng: np.random.Generator,
    *,
    junk: float = 0.05,
    distractors: float = 0.06,
    max_per_cam: int = 3,
    max_queries: int = 2,
    gallery_only: int = 0,
) -> list[Shot]:
    """Shots for a Market-1501-like release. Identities 0..n_train_ids-1 are train, the next
    n_ids are test; `junk` and `distractors` are fractions of the gallery size; the last
    `gallery_only` test identities are seen by one camera and never queried (DukeMTMC-reID's
    distractor identities)."""
    label = pids(n_train_ids + n_ids, rng)
    shots: list[Shot] = []
    counter = 0

    def seen_by(ident: int) -> np.ndarray:
        return np.sort(rng.choice(n_cams, size=int(rng.integers(2, n_cams + 1)), replace=False))

    for ident in range(n_train_ids):
        for cam in seen_by(ident):
            for _ in range(int(rng.integers(1, max_per_cam + 1))):
                shots.append(Shot(ident, int(label[ident]), int(cam), "train", counter))
                counter += 1
    n_gallery = 0
    for ident in range(n_train_ids, n_train_ids + n_ids):
        lonely = ident >= n_train_ids + n_ids - gallery_only
        cams = seen_by(ident)[:1] if lonely else seen_by(ident)
        n_query = 0 if lonely else min(int(rng.integers(1, max_queries + 1)), len(cams) - 1)
        for cam in rng.choice(cams, size=n_query, replace=False):
            shots.append(Shot(ident, int(label[ident]), int(cam), "query", counter))
            counter += 1
        for cam in cams:
            for _ in range(int(rng.integers(1, max_per_cam + 1))):
                shots.append(Shot(ident, int(label[ident]), int(cam), "gallery", counter))
                counter += 1
                n_gallery += 1
    for _ in range(int(round(junk * n_gallery))):
        ident = int(rng.integers(n_train_ids, n_train_ids + n_ids))
        shots.append(Shot(ident, JUNK, int(rng.integers(n_cams)), "gallery", counter))
        counter += 1
    for _ in range(int(round(distractors * n_gallery))):
        shots.append(Shot(-1, DISTRACTOR, int(rng.integers(n_cams)), "gallery", counter))
        counter += 1
    return shots


def frames(shots: list[Shot], rng: np.random.Generator) -> list[int]:
    """Increasing frame numbers per camera, in shot order: names never collide within a camera."""
    last: dict[int, int] = {}
    out = []
    for s in shots:
        last[s.cam] = last.get(s.cam, 0) + int(rng.integers(1, 400))
        out.append(last[s.cam])
    return out
