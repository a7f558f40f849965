"""Exact re-identification metrics: mAP, CMC and mINP under the Market rule, in bounded memory.

The reference evaluators (torchreid's ``eval_market1501``, fast-reid's) argsort every full row of
a full distance matrix. That is what makes them slow and memory-hungry at MSMT17 or LaST size. The
metrics only need the rank of each query's *positives*, so this module never sorts a full row on
the CPU and never holds more than one chunk of the distance matrix:

* the rank of the k-th nearest positive (1-based, among the gallery items that count) is
  ``k + #{negatives at distance <= its distance}``;
* a negative can only precede a positive if it is at most as far as the query's farthest
  positive, so only those candidates are sorted (a small set for any encoder that works);
* ``#negatives <= d`` = ``#all items <= d`` minus ``#same-identity items <= d``, and the
  same-identity items are known in advance from the labels (the gallery grouped by pid).

AP, CMC and mINP follow from these ranks exactly: AP = mean over positives of k / rank_k,
CMC counts the first positive's rank, INP = P / rank_P (Ye et al., TPAMI 2021). The numbers equal
torchreid's ``eval_market1501`` on tie-free inputs (the tests check this to 1e-6).

Ties are broken against the model: a negative at exactly the same distance as a positive ranks
before it. The rule is deterministic and independent of the gallery's row order, and it keeps a
collapsed encoder (many equal distances, e.g. half-precision features or a constant output) from
scoring by luck of the file order.

Distances come from features (``evaluate``: chunked products, cosine or Euclidean) or from a
matrix computed elsewhere (``evaluate_distances``). On a GPU the same ranks come from sorting whole
chunk rows on the device (cheap there); on the CPU each row's few candidates are sorted with numpy,
rows shared among torch's threads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reidray.errors import CellError, UnknownNameError
from reidray.score.expansion import AqeOptions, expand
from reidray.score.rerank import KReciprocal, RerankOptions

METRICS = ("cosine", "euclidean")
# Distance-matrix entries per query chunk: 2**24 float32 = 64 MiB, whatever the gallery size.
CHUNK_ELEMENTS = 1 << 24
_PAD = np.iinfo(np.int64).max  # rank of a missing positive: contributes k / _PAD ~ 0, masked anyway


def evaluate(
    qf: Any,
    gf: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    metric: str = "cosine",
    max_rank: int = 50,
    *,
    g_junk: Any = None,
    g_distractor: Any = None,
    camera_filter: bool = True,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
    cell: str = "evaluate",
    rerank: Mapping[str, Any] | None = None,
    aqe: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score one query set against one gallery; see the module docstring for the method.

    ``qf``/``gf`` are [N, D] numpy arrays or torch tensors (scored in float32, or in float64 when
    both are float64). ``metric`` is ``cosine`` (features are L2-normalised here) or
    ``euclidean`` (squared, which ranks the same). The Market rule: gallery items with the query's
    pid *and* camera are removed (``camera_filter=False`` keeps them as positives, for datasets
    without cameras); ``g_junk`` items are ignored entirely; ``g_distractor`` items are never a
    match, only negatives. Queries left without a positive are skipped and counted. ``device``
    defaults to CUDA when present; ``chunk_size`` (queries per chunk) to 2**24 distances a chunk.

    Post-processing (both keyword dicts, None = off; junk is dropped before either): ``aqe``
    replaces query and gallery features by fast-reid's average query expansion (``k``,
    ``alpha``, ``times``; ``expansion``); ``rerank`` ranks by torchreid's k-reciprocal
    re-ranked distances (``k1``, ``k2``, ``lambda_value``; ``rerank``). With both, expansion
    comes first, as in fast-reid. Bad options raise ``ValueError``.

    Returns ``mAP``, ``mINP`` (floats in [0, 1]), ``cmc`` (float64 array of ``max_rank``:
    ``cmc[r-1]`` = fraction of scored queries whose first match is within rank r), ``n_query``,
    ``n_query_scored``, ``n_gallery`` (after junk removal), ``ap`` (float64 array of ``n_query``:
    each query's AP, NaN for a query without a match; their mean over the scored ones is ``mAP``). Bad input raises ``CellError`` naming
    ``cell``.
    """
    if metric not in METRICS:
        raise UnknownNameError("metric", metric, list(METRICS))
    qf, q_largest = _features(qf, "query", cell)
    gf, g_largest = _features(gf, "gallery", cell)
    if qf.shape[1] != gf.shape[1]:
        raise CellError(
            f"cell {cell}: query features have dimension {qf.shape[1]} but gallery features "
            f"have {gf.shape[1]}; both sets must come from the same encoder"
        )
    dtype = torch.float64 if qf.dtype == gf.dtype == torch.float64 else torch.float32
    if max(q_largest, g_largest) ** 2 * qf.shape[1] > torch.finfo(dtype).max / 4:
        raise CellError(  # |q|^2 + |g|^2 + 2|q.g| must stay finite
            f"cell {cell}: features are too large to score in {dtype} (their squared norms "
            "overflow); the embeddings are corrupt or unscaled"
        )
    labels = _Labels.check(
        q_pids, g_pids, q_camids, g_camids, len(qf), len(gf), g_junk, g_distractor, camera_filter, cell
    )
    rerank_options = None if rerank is None else RerankOptions.parse(rerank)
    aqe_options = None if aqe is None else AqeOptions.parse(aqe)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gf = gf if labels.keep is None else gf[torch.from_numpy(labels.keep)]
    if aqe_options is not None:
        qf, gf = expand(qf.to(device, dtype), gf.to(device, dtype), aqe_options)
    if rerank_options is not None:
        reranked = KReciprocal(qf.to(device, dtype), gf.to(device, dtype), metric, rerank_options)
        return _score(labels, reranked.distances, max_rank, chunk_size, cell)
    gallery = _Gallery(gf, metric, dtype, device)
    return _score(labels, lambda start, stop: gallery.distances(qf[start:stop]), max_rank, chunk_size, cell)


def evaluate_distances(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    *,
    g_junk: Any = None,
    g_distractor: Any = None,
    camera_filter: bool = True,
    chunk_size: int | None = None,
    cell: str = "evaluate",
) -> dict[str, Any]:
    """``evaluate`` for a distance matrix someone else computed (re-ranking, another library's
    metric): [Nq, Ng], smaller = more similar, finite, a numpy array or a torch tensor on any
    device. The same rules, ties and result; the matrix is read one chunk at a time."""
    with warnings.catch_warnings():  # read-only arrays are fine: inputs are never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        dist = torch.as_tensor(distmat).detach()
    if dist.ndim != 2:
        raise CellError(f"cell {cell}: the distance matrix must be 2-D [Nq, Ng], got shape {tuple(dist.shape)}")
    labels = _Labels.check(
        q_pids, g_pids, q_camids, g_camids, dist.shape[0], dist.shape[1], g_junk, g_distractor, camera_filter, cell
    )
    if dist.numel() and not all(np.isfinite(float(v)) for v in torch.aminmax(dist)):  # NaN propagates
        raise CellError(f"cell {cell}: the distance matrix contains NaN or infinite values")
    if labels.keep is None:
        return _score(labels, lambda start, stop: dist[start:stop], max_rank, chunk_size, cell)
    keep = torch.from_numpy(labels.keep).to(dist.device)
    return _score(labels, lambda start, stop: dist[start:stop][:, keep], max_rank, chunk_size, cell)


@dataclass(frozen=True)
class _Labels:
    """Checked labels, after the protocol-independent rules: junk dropped (``keep``: the gallery
    columns kept, None if all), distractors given a pid no query has, cameras made irrelevant
    when camera filtering is off."""

    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    keep: np.ndarray | None

    @classmethod
    def check(
        cls,
        q_pids: Any,
        g_pids: Any,
        q_camids: Any,
        g_camids: Any,
        n_query: int,
        n_gallery: int,
        g_junk: Any,
        g_distractor: Any,
        camera_filter: bool,
        cell: str,
    ) -> _Labels:
        q_pids = _integers(q_pids, n_query, "query pids", cell)
        g_pids = _integers(g_pids, n_gallery, "gallery pids", cell)
        if camera_filter:
            q_camids = _integers(q_camids, n_query, "query camids", cell)
            g_camids = _integers(g_camids, n_gallery, "gallery camids", cell)
            if (q_camids < 0).any() or (g_camids < 0).any():
                raise CellError(
                    f"cell {cell}: the Market rule removes same-camera matches, but the dataset has "
                    "no camera ids (camid -1); use a protocol without camera filtering for it"
                )
        else:  # every same-pid gallery item is a positive: give each a camera no query has
            q_camids, g_camids = np.full(n_query, -1, dtype=np.int64), np.zeros(n_gallery, dtype=np.int64)
        if g_distractor is not None:  # one pid below every real one: never equal to a query's
            distractor = _booleans(g_distractor, n_gallery, "gallery distractor mask", cell)
            g_pids = np.where(distractor, min(q_pids.min(initial=0), g_pids.min(initial=0)) - 1, g_pids)
        keep = None if g_junk is None else ~_booleans(g_junk, n_gallery, "gallery junk mask", cell)
        if keep is not None and keep.all():
            keep = None
        if keep is not None:
            g_pids, g_camids = g_pids[keep], g_camids[keep]
        if n_query == 0 or len(g_pids) == 0:
            empty = "query" if n_query == 0 else "gallery"
            raise CellError(f"cell {cell}: the {empty} set is empty; check the dataset's split")
        return cls(q_pids, g_pids, q_camids, g_camids, keep)


def _score(
    labels: _Labels, distances: Callable[[int, int], torch.Tensor], max_rank: int, chunk_size: int | None, cell: str
) -> dict[str, Any]:
    """The metrics, from query chunks of the distance matrix (``distances(start, stop)``)."""
    if max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    n_query, n_gallery = len(labels.q_pids), len(labels.g_pids)
    groups = _SamePid(labels.q_pids, labels.g_pids, labels.g_camids)
    rows = chunk_size or max(1, CHUNK_ELEMENTS // n_gallery)
    first_rank_counts = np.zeros(max_rank + 1, dtype=np.int64)  # last bin: beyond max_rank
    ap = np.full(n_query, np.nan)  # per query; NaN: no positive, not scored
    inp_sum = 0.0
    n_scored = 0
    for start in range(0, n_query, rows):
        stop = min(start + rows, n_query)
        same, is_pos = groups.block(start, stop, labels.q_camids[start:stop])
        n_pos = is_pos.sum(axis=1)
        scored = n_pos > 0
        if not scored.any():
            continue
        dist = distances(start, stop)
        if dist.device.type == "cpu":
            ranks = _positive_ranks_rows(dist.numpy(), same, is_pos)
        else:
            ranks = _positive_ranks_sorted(dist, same, is_pos)
        ranks, n_pos = ranks[scored], n_pos[scored]
        k = np.arange(1, ranks.shape[1] + 1)
        ap[start + np.flatnonzero(scored)] = np.where(k <= n_pos[:, None], k / ranks, 0.0).sum(axis=1) / n_pos
        inp_sum += float((n_pos / ranks[np.arange(len(ranks)), n_pos - 1]).sum())
        first_rank_counts += np.bincount(np.minimum(ranks[:, 0], max_rank + 1) - 1, minlength=max_rank + 1)
        n_scored += len(ranks)
    if n_scored == 0:
        raise CellError(
            f"cell {cell}: none of the {n_query} queries has a valid match in the gallery "
            f"({n_gallery} items); check that query and gallery share identities and cameras differ"
        )
    return {
        "mAP": float(np.nansum(ap)) / n_scored,
        "mINP": inp_sum / n_scored,
        "cmc": np.cumsum(first_rank_counts[:max_rank]) / n_scored,
        "n_query": n_query,
        "n_query_scored": n_scored,
        "n_gallery": n_gallery,
        "ap": ap,
    }


class _Gallery:
    """The gallery on the scoring device, ready to give distances to any chunk of queries.

    Cosine distance is the negated similarity of L2-normalised features: exact, whereas ``1 - s``
    rounds distinct similarities below 0.5 to equal float32 values and so invents ties. Euclidean
    distance is squared, which ranks the same as the true distance. Scalings by -1 and -2 are
    applied to the query chunk before the product (exact, and one pass less over the result). On
    the CPU the product goes through numpy's BLAS (OpenBLAS), 1.5-2x faster than torch's MKL on
    the AMD CPUs measured (benchmarks/bench_score.py); on a GPU through torch.
    """

    def __init__(self, gf: torch.Tensor, metric: str, dtype: torch.dtype, device: torch.device) -> None:
        self.metric, self.dtype, self.device = metric, dtype, device
        g = self._prepare(gf)
        self.g_sq = torch.einsum("ij,ij->i", g, g) if metric == "euclidean" else None
        self.g = g.numpy().T if device.type == "cpu" else g.T

    def distances(self, qf: torch.Tensor) -> torch.Tensor:
        """[C, Ng] distances, smaller = more similar."""
        q = self._prepare(qf)
        scaled = -q if self.metric == "cosine" else -2 * q
        dist = torch.from_numpy(scaled.numpy() @ self.g) if self.device.type == "cpu" else torch.mm(scaled, self.g)
        if self.metric == "cosine":
            return dist
        return dist.add_(torch.einsum("ij,ij->i", q, q)[:, None]).add_(self.g_sq)

    def _prepare(self, f: torch.Tensor) -> torch.Tensor:
        f = f.to(device=self.device, dtype=self.dtype)
        return F.normalize(f, dim=1) if self.metric == "cosine" else f


class _SamePid:
    """The gallery grouped by pid, so each query's same-identity items are a slice, not a scan."""

    def __init__(self, q_pids: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray) -> None:
        self.order = np.argsort(g_pids, kind="stable")
        sorted_pids = g_pids[self.order]
        self.begin = np.searchsorted(sorted_pids, q_pids, side="left")
        self.end = np.searchsorted(sorted_pids, q_pids, side="right")
        self.g_camids = g_camids

    def block(self, start: int, stop: int, q_camids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For queries [start, stop): padded gallery indices of same-pid items [C, L] (-1 = pad)
        and which of them are positives (a different camera from the query)."""
        begin, end = self.begin[start:stop], self.end[start:stop]
        width = int((end - begin).max(initial=0))
        pos = begin[:, None] + np.arange(width)
        inside = pos < end[:, None]
        same = np.where(inside, self.order[np.minimum(pos, len(self.order) - 1)], -1)
        is_pos = inside & (self.g_camids[same] != q_camids[:, None])
        return same, is_pos


def _positive_ranks_rows(dist: np.ndarray, same: np.ndarray, is_pos: np.ndarray) -> np.ndarray:
    """CPU: the 1-based ranks of each query's positives, ascending, as [C, max P] (pad: int64 max).

    Per row only the items no farther than the farthest positive are sorted: those are the only
    ones that can precede a positive. Rows are shared among torch's CPU threads (numpy's sort
    and comparisons release the GIL).
    """
    n_pos = is_pos.sum(axis=1)
    ranks = np.full((len(dist), max(int(n_pos.max(initial=0)), 1)), _PAD, dtype=np.int64)

    def rank(rows: np.ndarray) -> None:
        for i in rows:
            row = dist[i]
            positives = np.sort(row[same[i][is_pos[i]]])
            candidates = np.sort(row[row <= positives[-1]])
            own_identity = np.sort(row[same[i][same[i] >= 0]])  # positives and same-camera removals
            negatives_before = np.searchsorted(candidates, positives, side="right") - np.searchsorted(
                own_identity, positives, side="right"
            )
            ranks[i, : len(positives)] = np.arange(1, len(positives) + 1) + negatives_before

    threads = torch.get_num_threads()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(rank, np.array_split(np.flatnonzero(n_pos), threads)))
    return ranks


def _positive_ranks_sorted(dist: torch.Tensor, same: np.ndarray, is_pos: np.ndarray) -> np.ndarray:
    """Any torch device (used on GPUs, where sorting is cheap): the same ranks as
    ``_positive_ranks_rows``, batched over the chunk from fully sorted rows."""
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    same_d = dist.gather(1, torch.from_numpy(np.maximum(same, 0)).to(dist.device))
    pos_d = torch.where(torch.from_numpy(is_pos).to(dist.device), same_d, inf).sort(dim=1).values
    same_d = torch.where(torch.from_numpy(same >= 0).to(dist.device), same_d, inf).sort(dim=1).values
    negatives_before = torch.searchsorted(dist.sort(dim=1).values, pos_d, right=True) - torch.searchsorted(
        same_d, pos_d, right=True
    )
    ranks = (torch.arange(1, pos_d.shape[1] + 1, device=dist.device) + negatives_before).cpu().numpy()
    ranks[np.arange(ranks.shape[1]) >= is_pos.sum(axis=1)[:, None]] = _PAD
    return ranks


def _features(x: Any, name: str, cell: str) -> tuple[torch.Tensor, float]:
    """A 2-D floating CPU tensor with only finite values and its largest magnitude, or a
    CellError saying what is wrong. One min/max pass: NaN and inf show up in it."""
    with warnings.catch_warnings():  # read-only arrays (e.g. from Arrow) are fine: inputs are never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.as_tensor(x).detach()
    if t.ndim != 2:
        raise CellError(f"cell {cell}: {name} features must be a 2-D [N, D] array, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    if t.numel() == 0:
        return t, 0.0
    lo, hi = (float(v) for v in torch.aminmax(t))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        rows = torch.nonzero(~torch.isfinite(t).all(dim=1)).flatten()
        raise CellError(
            f"cell {cell}: {len(rows)} {name} embeddings contain NaN or infinite values "
            f"(first at row {int(rows[0])}); re-embed the cell"
        )
    return t, max(-lo, hi)


def _integers(x: Any, n: int, name: str, cell: str) -> np.ndarray:
    """Integer labels as an int64 numpy array of length ``n``."""
    a = x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise CellError(f"cell {cell}: {name} must be {n} integers (one per row), got {a.dtype} of shape {a.shape}")
    return a.astype(np.int64, copy=False)


def _booleans(x: Any, n: int, name: str, cell: str) -> np.ndarray:
    """A boolean numpy mask of length ``n``."""
    a = x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.shape != (n,) or a.dtype != np.bool_:
        raise CellError(f"cell {cell}: {name} must be {n} booleans, got {a.dtype} of shape {a.shape}")
    return a
