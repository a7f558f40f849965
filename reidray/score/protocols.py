"""The evaluation protocols, each in one place, all built on ``evaluate``.

Each dataset names its protocol in its registry entry (``DatasetSpec.protocol``, where its other
rules live); here each protocol name maps to the function that scores a cell under it. A protocol
turns one cell's table (embeddings joined with the manifest) into result rows. Image flags mean
the same everywhere: ``is_junk`` images are ignored (never a query, never in the gallery);
``is_distractor`` images are gallery negatives only (never a match, never a query).

* ``market`` — Market-1501, DukeMTMC-reID, MSMT17, CUHK03-NP, IUST, PKU-Reid and the built-in
  ``reidray-synth``: query split vs gallery split, the Market rule (a gallery image with the
  query's pid and camera is removed), one row with ``trial`` 0. CUHK03 is scored the way its new
  protocol (767/700) is defined, Market-style; the single-gallery-shot "CUHK03 metric" belongs to
  the classic 20-split protocol and is not used. PKU-Reid has no released split: its dataset
  module writes a deterministic one into ``split``, and the protocol here is the Market rule.
* ``grid`` — GRID's 10 trials from its released partition (manifest column ``grid_trials``: the
  trials in which an image is in the test set). Per trial: that trial's probe images against its
  gallery images plus all 775 distractors, Market rule. One row per trial (0-9) and a mean row
  (``trial`` -1, ``aggregate`` True): metrics are the mean over trials (the standard GRID
  figure), counts are the per-trial counts rounded to their mean.
* ``no-camera-filter`` — Celeb-reID and LaST: every gallery image of the query's identity is a
  positive, same camera or not (Celeb-reID's camera field is an image index; LaST has no cameras,
  camid -1). One row, ``trial`` 0.

A protocol that needs camera ids refuses a dataset without them (camid -1) instead of guessing.

Post-processing (``postprocess``): ``none`` scores the features as they are; ``rerank`` and
``aqe`` pass their options down to ``evaluate`` (k-reciprocal re-ranking, average query
expansion) for every query/gallery pair the protocol scores, trials included. Each row says
which one it is in ``postprocess``. A fusion (``score_fusion``) scores several embedding
columns of one table together (``fusion.evaluate_fused``) under the same protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reidray.cells import EMBEDDING
from reidray.errors import CellError, UnknownNameError
from reidray.score.fusion import evaluate_fused
from reidray.score.metrics import evaluate

MAX_RANK = 50
RANKS = (1, 5, 10, 20)
GRID_TRIALS = 10
REQUIRED = ("pid", "camid", "split", "is_junk", "is_distractor")  # besides the embedding column(s)

POSTPROCESS = ("none", "rerank", "aqe")



@dataclass(frozen=True)
class Scoring:
    """How a protocol scores each query/gallery pair: embedding columns with their metric and
    weight (one: ``evaluate``; several: a fusion) and ``evaluate``'s post-processing keywords."""

    members: tuple[tuple[str, str, float], ...]
    post: dict[str, Any]

    def evaluate(self, images: _Images, q: np.ndarray, g: np.ndarray, cell: str, **labels: Any) -> dict[str, Any]:
        if len(self.members) == 1:
            column, metric, _ = self.members[0]
            f = images.features[column]
            return evaluate(f[q], f[g], metric=metric, max_rank=MAX_RANK, cell=cell, **labels, **self.post)
        members = [(images.features[c][q], images.features[c][g], metric) for c, metric, _ in self.members]
        weights = [w for _, _, w in self.members]
        return evaluate_fused(members, weights, max_rank=MAX_RANK, cell=cell, **labels)


# (table, how to score, cell) -> rows
Protocol = Callable[[pa.Table, Scoring, str], list[dict[str, Any]]]


def score_cell(
    protocol: str,
    table: pa.Table,
    metric: str,
    *,
    cell: str | None = None,
    postprocess: str = "none",
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Result rows for one cell: ``protocol`` (a dataset's ``DatasetSpec.protocol``) applied to ``table``.

    ``cell`` names the cell in error messages (default: the protocol name). ``postprocess``
    (``none`` | ``rerank`` | ``aqe``) with its ``options`` (``evaluate``'s ``rerank`` / ``aqe``
    dict; None = the defaults). Each row has ``protocol``, ``trial``, ``aggregate``,
    ``postprocess``, ``mAP``, ``rank1/5/10/20``, ``mINP``, ``cmc`` (the curve to rank 50, a
    list), ``n_query``, ``n_query_scored``, ``n_gallery``.
    """
    if postprocess not in POSTPROCESS:
        raise UnknownNameError("post-processing", postprocess, list(POSTPROCESS))
    post = {} if postprocess == "none" else {postprocess: dict(options or {})}
    rows = _protocol(protocol, table, Scoring(((EMBEDDING, metric, 1.0),), post), cell or protocol)
    return [{**row, "postprocess": postprocess} for row in rows]


def score_fusion(
    protocol: str, table: pa.Table, members: list[tuple[str, str, float]], *, cell: str | None = None
) -> list[dict[str, Any]]:
    """``score_cell`` for a fusion: ``table`` holds one embedding column per member, listed as
    (column, metric, weight); rows as ``score_cell``'s, ``postprocess`` "none"."""
    rows = _protocol(protocol, table, Scoring(tuple(members), {}), cell or protocol)
    return [{**row, "postprocess": "none"} for row in rows]


def _protocol(protocol: str, table: pa.Table, scoring: Scoring, cell: str) -> list[dict[str, Any]]:
    if protocol not in PROTOCOLS:
        raise UnknownNameError("protocol", protocol, list(PROTOCOLS))
    needed = [*(column for column, _, _ in scoring.members), *REQUIRED]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise CellError(f"cell {cell}: the embeddings table lacks column(s) {', '.join(missing)}")
    return PROTOCOLS[protocol](table, scoring, cell)


def market(table: pa.Table, scoring: Scoring, cell: str) -> list[dict[str, Any]]:
    """Single split, Market rule."""
    return [_score(_Images.from_table(table, scoring, cell), "market", 0, scoring, cell, camera_filter=True)]


def no_camera_filter(table: pa.Table, scoring: Scoring, cell: str) -> list[dict[str, Any]]:
    """Single split; every same-identity gallery image is a positive (Celeb-reID, LaST)."""
    images = _Images.from_table(table, scoring, cell)
    return [_score(images, "no-camera-filter", 0, scoring, cell, camera_filter=False)]


def grid(table: pa.Table, scoring: Scoring, cell: str) -> list[dict[str, Any]]:
    """GRID: one row per trial of the released partition, then their mean."""
    if "grid_trials" not in table.column_names:
        raise CellError(f"cell {cell}: GRID needs the manifest column grid_trials (the test trials of each image)")
    images = _Images.from_table(table, scoring, cell)
    in_trial = _trial_membership(table.column("grid_trials"), cell)
    rows = []
    for trial in range(GRID_TRIALS):
        subset = replace(
            images,
            query=images.query & in_trial[:, trial],
            gallery=images.gallery & (in_trial[:, trial] | images.distractor),
        )
        rows.append(_score(subset, "grid", trial, scoring, f"{cell} (GRID trial {trial})", camera_filter=True))
    mean: dict[str, Any] = {"protocol": "grid", "trial": -1, "aggregate": True}
    for key in ("mAP", *(f"rank{r}" for r in RANKS), "mINP"):
        mean[key] = float(np.mean([r[key] for r in rows]))
    mean["cmc"] = np.mean([r["cmc"] for r in rows], axis=0).tolist()
    for key in ("n_query", "n_query_scored", "n_gallery"):
        mean[key] = int(round(np.mean([r[key] for r in rows])))
    return rows + [mean]


PROTOCOLS: dict[str, Protocol] = {"market": market, "grid": grid, "no-camera-filter": no_camera_filter}


@dataclass(frozen=True)
class _Images:
    """The table's columns as numpy arrays, and which images form the query and gallery sides."""

    features: dict[str, np.ndarray]  # per embedding column
    pid: np.ndarray
    camid: np.ndarray
    distractor: np.ndarray
    query: np.ndarray
    gallery: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table, scoring: Scoring, cell: str) -> _Images:
        split = table.column("split").to_numpy(zero_copy_only=False)
        junk = table.column("is_junk").to_numpy(zero_copy_only=False).astype(bool)
        distractor = table.column("is_distractor").to_numpy(zero_copy_only=False).astype(bool)
        return cls(
            features={c: _embeddings(table.column(c), cell) for c, _, _ in scoring.members},
            pid=table.column("pid").to_numpy().astype(np.int64),
            camid=table.column("camid").to_numpy().astype(np.int64),
            distractor=distractor,
            query=(split == "query") & ~junk & ~distractor,
            gallery=(split == "gallery") & ~junk,
        )


def _score(
    images: _Images, protocol: str, trial: int, scoring: Scoring, cell: str, *, camera_filter: bool
) -> dict[str, Any]:
    q, g = images.query, images.gallery
    m = scoring.evaluate(
        images, q, g, cell,
        q_pids=images.pid[q],
        g_pids=images.pid[g],
        q_camids=images.camid[q],
        g_camids=images.camid[g],
        g_distractor=images.distractor[g],
        camera_filter=camera_filter,
    )
    row: dict[str, Any] = {"protocol": protocol, "trial": trial, "aggregate": False, "mAP": m["mAP"]}
    row.update({f"rank{r}": float(m["cmc"][r - 1]) for r in RANKS})
    row.update(mINP=m["mINP"], cmc=m["cmc"].tolist())
    row.update({k: m[k] for k in ("n_query", "n_query_scored", "n_gallery")})
    return row


def _embeddings(column: pa.ChunkedArray, cell: str) -> np.ndarray:
    """[N, D] features from a (fixed-size) list column, without a per-row Python loop."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_fixed_size_list(array.type) and not pa.types.is_list(array.type):
        raise CellError(f"cell {cell}: the embedding column must be a list of floats, got {array.type}")
    if array.null_count:
        raise CellError(f"cell {cell}: {array.null_count} embeddings are missing (null); re-embed the cell")
    lengths = np.diff(array.offsets.to_numpy()) if pa.types.is_list(array.type) else None
    if lengths is not None and len(lengths) and (lengths != lengths[0]).any():
        raise CellError(f"cell {cell}: embeddings have different lengths ({lengths.min()}..{lengths.max()})")
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(array), -1) if len(array) else values.reshape(0, 0)


def _trial_membership(column: pa.ChunkedArray, cell: str) -> np.ndarray:
    """[N, 10] booleans from GRID's list column of trial indices."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    trials = array.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    if len(trials) and (trials.min() < 0 or trials.max() >= GRID_TRIALS):
        raise CellError(f"cell {cell}: grid_trials holds trial indices outside 0..{GRID_TRIALS - 1}")
    member = np.zeros((len(array), GRID_TRIALS), dtype=bool)
    member[pc.list_parent_indices(array).to_numpy(), trials] = True
    return member
