"""The evaluation protocols, each in one place, all built on ``evaluate``.

Each dataset names its protocol in its registry entry (``DatasetSpec.protocol``, where its other
rules live); here each protocol name maps to the function that lists the query/gallery pairs
(``Side``) it scores in one cell's table (embeddings joined with the manifest); each pair gives
one result row, and several (trials) add their mean row. Rank lists (``ranklists``) show the
first pair, under the same rules. Image flags mean
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
import torch

from reidray.cells import EMBEDDING
from reidray.errors import CellError, UnknownNameError
from reidray.score.fusion import evaluate_fused, standardised
from reidray.score.metrics import _features, _Gallery, evaluate

MAX_RANK = 50
RANKS = (1, 5, 10, 20)
GRID_TRIALS = 10
REQUIRED = ("pid", "camid", "split", "is_junk", "is_distractor")  # besides the embedding column(s)

POSTPROCESS = ("none", "rerank", "aqe")



@dataclass(frozen=True)
class Scoring:
    """How a protocol scores each query/gallery pair: embedding columns with their metric and
    weight (one: ``evaluate``; several: a fusion) and ``evaluate``'s post-processing keywords.
    ``aps``, when given, receives each trial's per-query AP (``evaluate``'s ``ap``, in the order
    of the trial's queries): rank lists pick their hardest queries from it without ranking again."""

    members: tuple[tuple[str, str, float], ...]
    post: dict[str, Any]
    aps: dict[int, np.ndarray] | None = None

    def evaluate(self, images: _Images, q: np.ndarray, g: np.ndarray, cell: str, **labels: Any) -> dict[str, Any]:
        if len(self.members) == 1:
            column, metric, _ = self.members[0]
            f = images.features[column]
            return evaluate(f[q], f[g], metric=metric, max_rank=MAX_RANK, cell=cell, **labels, **self.post)
        members = [(images.features[c][q], images.features[c][g], metric) for c, metric, _ in self.members]
        weights = [w for _, _, w in self.members]
        return evaluate_fused(members, weights, max_rank=MAX_RANK, cell=cell, **labels)

    def distances(self, images: _Images, q: np.ndarray, g: np.ndarray, counted: np.ndarray) -> np.ndarray:
        """[len(q), len(g)] the distances the metric ranks by, from query rows ``q`` to gallery
        rows ``g`` (indices into the table); a fusion standardises over the ``counted`` columns
        (the gallery the metric ranks against) and applies the same statistics to the others.
        Plain features only: rank lists show what the encoder retrieves (``post`` is not applied)."""
        total = None
        for column, metric, weight in self.members:
            f, _ = _features(images.features[column], "rank-list", column)
            dtype = torch.float64 if f.dtype == torch.float64 else torch.float32
            d = _Gallery(f[torch.from_numpy(g)], metric, dtype, torch.device("cpu")).distances(f[torch.from_numpy(q)])
            if len(self.members) == 1:
                return d.double().numpy()
            z = standardised(d, torch.from_numpy(counted)) * weight
            total = z if total is None else total + z
        return total.numpy()


@dataclass(frozen=True)
class Side:
    """One query/gallery pair a protocol scores: ``images`` with their query and gallery masks
    (the gallery still holds its junk images: ``_score`` drops them), the rule, the trial."""

    trial: int
    images: _Images
    camera_filter: bool
    cell: str  # the name error messages give


# (table, how to score, cell) -> the pairs it scores, in trial order
Protocol = Callable[[pa.Table, Scoring, str], list[Side]]


def score_cell(
    protocol: str,
    table: pa.Table,
    metric: str,
    *,
    cell: str | None = None,
    postprocess: str = "none",
    options: dict[str, Any] | None = None,
    aps: dict[int, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Result rows for one cell: ``protocol`` (a dataset's ``DatasetSpec.protocol``) applied to ``table``.

    ``cell`` names the cell in error messages (default: the protocol name). ``postprocess``
    (``none`` | ``rerank`` | ``aqe``) with its ``options`` (``evaluate``'s ``rerank`` / ``aqe``
    dict; None = the defaults). ``aps``: see ``Scoring``. Each row has ``protocol``, ``trial``,
    ``aggregate``, ``postprocess``, ``mAP``, ``rank1/5/10/20``, ``mINP``, ``cmc`` (the curve to
    rank 50, a list), ``n_query``, ``n_query_scored``, ``n_gallery``.
    """
    if postprocess not in POSTPROCESS:
        raise UnknownNameError("post-processing", postprocess, list(POSTPROCESS))
    post = {} if postprocess == "none" else {postprocess: dict(options or {})}
    rows = _protocol(protocol, table, Scoring(plain(metric).members, post, aps), cell or protocol)
    return [{**row, "postprocess": postprocess} for row in rows]


def score_fusion(
    protocol: str, table: pa.Table, members: list[tuple[str, str, float]], *, cell: str | None = None,
    aps: dict[int, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """``score_cell`` for a fusion: ``table`` holds one embedding column per member, listed as
    (column, metric, weight); rows as ``score_cell``'s, ``postprocess`` "none"."""
    rows = _protocol(protocol, table, Scoring(tuple(members), {}, aps), cell or protocol)
    return [{**row, "postprocess": "none"} for row in rows]


def plain(metric: str) -> Scoring:
    """The cell's own embedding column compared by its metric, nothing done to it."""
    return Scoring(((EMBEDDING, metric, 1.0),), {})


def shown_side(protocol: str, table: pa.Table, scoring: Scoring, cell: str) -> Side:
    """The pair rank lists show: the protocol's only one, or its first trial (GRID's trial 0)."""
    return _sides(protocol, table, scoring, cell)[0]


def side_ap(side: Side, scoring: Scoring) -> np.ndarray:
    """Each query's AP on one pair (NaN: no match), as its result row's mAP averages them."""
    aps: dict[int, np.ndarray] = {}
    _score(side, "", replace(scoring, aps=aps))
    return aps[side.trial]


def _sides(protocol: str, table: pa.Table, scoring: Scoring, cell: str) -> list[Side]:
    if protocol not in PROTOCOLS:
        raise UnknownNameError("protocol", protocol, list(PROTOCOLS))
    needed = [*(column for column, _, _ in scoring.members), *REQUIRED]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise CellError(f"cell {cell}: the embeddings table lacks column(s) {', '.join(missing)}")
    return PROTOCOLS[protocol](table, scoring, cell)


def _protocol(protocol: str, table: pa.Table, scoring: Scoring, cell: str) -> list[dict[str, Any]]:
    """One row per pair the protocol scores; several (trials) add their mean row."""
    rows = [_score(side, protocol, scoring) for side in _sides(protocol, table, scoring, cell)]
    if len(rows) == 1:
        return rows
    mean: dict[str, Any] = {"protocol": protocol, "trial": -1, "aggregate": True}
    for key in ("mAP", *(f"rank{r}" for r in RANKS), "mINP"):
        mean[key] = float(np.mean([r[key] for r in rows]))
    mean["cmc"] = np.mean([r["cmc"] for r in rows], axis=0).tolist()
    for key in ("n_query", "n_query_scored", "n_gallery"):
        mean[key] = int(round(np.mean([r[key] for r in rows])))
    return rows + [mean]


def market(table: pa.Table, scoring: Scoring, cell: str) -> list[Side]:
    """Single split, Market rule."""
    return [Side(0, _Images.from_table(table, scoring, cell), True, cell)]


def no_camera_filter(table: pa.Table, scoring: Scoring, cell: str) -> list[Side]:
    """Single split; every same-identity gallery image is a positive (Celeb-reID, LaST)."""
    return [Side(0, _Images.from_table(table, scoring, cell), False, cell)]


def grid(table: pa.Table, scoring: Scoring, cell: str) -> list[Side]:
    """GRID: one pair per trial of the released partition (their mean row is added after)."""
    if "grid_trials" not in table.column_names:
        raise CellError(f"cell {cell}: GRID needs the manifest column grid_trials (the test trials of each image)")
    images = _Images.from_table(table, scoring, cell)
    in_trial = _trial_membership(table.column("grid_trials"), cell)
    return [
        Side(
            trial,
            replace(images, query=images.query & in_trial[:, trial],
                    gallery=images.gallery & (in_trial[:, trial] | images.distractor)),
            True,
            f"{cell} (GRID trial {trial})",
        )
        for trial in range(GRID_TRIALS)
    ]


PROTOCOLS: dict[str, Protocol] = {"market": market, "grid": grid, "no-camera-filter": no_camera_filter}


@dataclass(frozen=True)
class _Images:
    """The table's columns as numpy arrays, and which images form the query and gallery sides
    (the gallery side with its junk images, which only rank lists show)."""

    features: dict[str, np.ndarray]  # per embedding column
    pid: np.ndarray
    camid: np.ndarray
    junk: np.ndarray
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
            junk=junk,
            distractor=distractor,
            query=(split == "query") & ~junk & ~distractor,
            gallery=split == "gallery",
        )


def _score(side: Side, protocol: str, scoring: Scoring) -> dict[str, Any]:
    images = side.images
    q, g = images.query, images.gallery & ~images.junk
    m = scoring.evaluate(
        images, q, g, side.cell,
        q_pids=images.pid[q],
        g_pids=images.pid[g],
        q_camids=images.camid[q],
        g_camids=images.camid[g],
        g_distractor=images.distractor[g],
        camera_filter=side.camera_filter,
    )
    if scoring.aps is not None:
        scoring.aps[side.trial] = m["ap"]
    row: dict[str, Any] = {"protocol": protocol, "trial": side.trial, "aggregate": False, "mAP": m["mAP"]}
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
