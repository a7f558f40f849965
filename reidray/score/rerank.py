"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) with torchreid's numbers, in bounded memory.

torchreid's ``re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)`` (the Zhong/Huang code) builds
the full (Q+G)^2 distance matrix, argsorts every row and fills two dense (Q+G)^2 weight
matrices: at MSMT17 size (93,820 images) each is 35 GB. Its definition needs much less. With
N = Q + G items, D the distances fed to it (``compute_distance_matrix``: squared Euclidean, or
1 - cosine), and O(i, j) = D(i, j)^2 / max_k D(k, i)^2 (it squares D and divides each column by
its maximum over all N items, then transposes):

1. R(i, k) = the items among i's k+1 nearest that have i among *their* k+1 nearest.
2. The expansion of R(i, k1): the union of R(i, k1) and every R(c, round(k1/2)) of a c in
   R(i, k1) that shares more than 2/3 of its items with R(i, k1) (numpy's round: half to even).
3. V(i) = exp(-O(i, e)) over the expansion's items e, normalised to sum 1: a sparse row.
4. Local query expansion (k2 > 1): V(i) replaced by the mean of V over i's k2 nearest items.
5. For a query q and a gallery item g: m = sum over all N items l of min(V(q)[l], V(g)[l]),
   Jaccard = 1 - m / (2 - m), final = (1 - lambda) * Jaccard + lambda * O(q, g).

So this module keeps per item its k nearest neighbours and its farthest distance (one pass over
the symmetric matrix in tiles, ``neighbours.nearest``), sparse V rows (about 10-200 non-zeros
each), and an inverted index of the gallery rows of V; the final distances are produced one
query chunk at a time, straight into the chunked ranker of ``metrics``. Peak memory is the
features plus O(N * nnz(V)), never N^2.

Numerics: torchreid computes in float32 (this version of the code replaced the original
float16 by float32); here neighbours and distances are float32 (float64 for float64 features)
and the weights, Jaccard term and final distance float64. The two agree to float32 rounding,
so the rankings, and hence mAP and CMC, are the same whenever torchreid's float32 final
distances have no ties between a match and a non-match (the tests check this on random
problems). With ``lambda_value`` 0 the final distance is the Jaccard term alone: every gallery
item that shares no neighbour with the query ties at 1, and equal overlaps tie exactly in real
arithmetic but not always in float32, so there the metrics depend on tie-breaking (torchreid's
argsort order, reidray's ties-against-the-model) and the two differ by design. If every
distance of an item is 0 (a collapsed encoder), torchreid divides 0 by 0; here O is 0 and the
resulting ties count against the model, as everywhere in ``metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reidray.score.neighbours import PairDistances, nearest
from reidray.score.options import parse_options

# Gallery entries gathered at once when building a query chunk's Jaccard term.
TRIPLETS = 1 << 23


@dataclass(frozen=True)
class RerankOptions:
    """The re-ranking parameters, named as in torchreid (the paper's defaults)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> RerankOptions:
        """From ``evaluate(rerank=...)``: unknown keys and out-of-range values are errors."""
        parsed = parse_options(cls, options, "re-ranking", ("k1", "k2"))
        if not 0.0 <= float(parsed.lambda_value) <= 1.0:
            raise ValueError(f"re-ranking lambda_value must be in [0, 1], got {parsed.lambda_value!r}")
        return parsed


@dataclass(frozen=True)
class _Sparse:
    """Rows of a sparse matrix (CSR): row r holds ``col[ptr[r]:ptr[r+1]]``, ``val[...]``."""

    ptr: np.ndarray
    col: np.ndarray
    val: np.ndarray

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the listed rows' entries, and how many each row has."""
        lengths = self.ptr[rows + 1] - self.ptr[rows]
        return _ranges(self.ptr[rows], lengths), lengths


class KReciprocal:
    """Re-ranked distances from each query chunk to the gallery (see the module docstring)."""

    def __init__(self, qf: torch.Tensor, gf: torch.Tensor, metric: str, options: RerankOptions) -> None:
        self.n_query, self.lam = len(qf), float(options.lambda_value)
        self.dist = PairDistances(torch.cat([qf, gf]), metric)
        n = len(self.dist)
        neighbours = nearest(self.dist, max(options.k1 + 1, options.k2))
        self.far2 = neighbours.far2
        v = self._weights(_expansions(neighbours.index, options.k1))
        if options.k2 != 1:
            v = _mean_rows(v, neighbours.index[:, : options.k2], n)
        self.v = v
        self.gallery = _gallery_index(v, self.n_query, n)

    def distances(self, start: int, stop: int) -> torch.Tensor:
        """[stop - start, G] float64 re-ranked distances of queries start..stop."""
        n_gallery = len(self.dist) - self.n_query
        d = self.dist.block(slice(start, stop), slice(self.n_query, None)).double().cpu().numpy()
        final = np.square(d, out=d)
        final *= self.lam / _safe(self.far2[start:stop])[:, None]  # lambda * O(q, g)
        m = self._overlap(np.arange(start, stop), n_gallery)
        final += (1.0 - self.lam) * (1.0 - m / (2.0 - m))  # (1 - lambda) * Jaccard
        return torch.from_numpy(final)

    def _weights(self, members: _Sparse) -> _Sparse:
        """V: exp(-O(i, e)) over each item's expansion, rows normalised to sum 1."""
        owner = np.repeat(np.arange(len(members.ptr) - 1), np.diff(members.ptr))
        d = self.dist.pairs(owner, members.col)
        w = np.exp(-np.square(d) / _safe(self.far2)[owner])
        sums = np.add.reduceat(w, members.ptr[:-1]) if len(w) else w
        return _Sparse(members.ptr, members.col, w / sums[owner])

    def _overlap(self, queries: np.ndarray, n_gallery: int) -> np.ndarray:
        """m[q, g] = sum_l min(V(q)[l], V(g)[l]) for the listed queries, via the inverted index."""
        ptr, rows, vals = self.gallery
        pos, lengths = self.v.gather(queries)
        cols = self.v.col[pos]
        per_entry = ptr[cols + 1] - ptr[cols]  # gallery items sharing each of the queries' entries
        entry_end = np.cumsum(lengths)
        gathered_end = np.cumsum(per_entry)[entry_end - 1] if len(per_entry) else np.zeros(len(queries), np.int64)
        gathered_end = np.where(lengths > 0, gathered_end, 0)
        gathered_end = np.maximum.accumulate(gathered_end)  # queries without entries gather nothing
        m = np.zeros((len(queries), n_gallery), dtype=np.float64)
        first = 0
        while first < len(queries):  # parts of at most TRIPLETS gathered entries (one query at least)
            before = gathered_end[first - 1] if first else 0
            last = max(first + 1, int(np.searchsorted(gathered_end, before + TRIPLETS, "right")))
            e0, e1 = int(entry_end[first] - lengths[first]), int(entry_end[last - 1])
            at = _ranges(ptr[cols[e0:e1]], per_entry[e0:e1])
            owner = np.repeat(np.repeat(np.arange(last - first), lengths[first:last]), per_entry[e0:e1])
            mins = np.minimum(np.repeat(self.v.val[pos[e0:e1]], per_entry[e0:e1]), vals[at])
            size = (last - first) * n_gallery
            m[first:last] = np.bincount(owner * n_gallery + rows[at], mins, size).reshape(-1, n_gallery)
            first = last
        return m


def _expansions(index: np.ndarray, k1: int, chunk: int = 4096) -> _Sparse:
    """Each item's expanded k-reciprocal set (steps 1-2), sorted, as a pattern (no values)."""
    n = len(index)
    full = index[:, : min(k1 + 1, n)]
    half = index[:, : min(int(np.around(k1 / 2.0)) + 1, n)]
    in_full, in_half = _reciprocal(full, chunk), _reciprocal(half, chunk)
    sets = []
    for s in range(0, n, chunk):
        f, r = full[s : s + chunk], in_full[s : s + chunk]
        members = np.where(r, f, -1)  # R(i, k1), -1 = not a member
        cand, cand_in = half[f], in_half[f]  # [B, K1, Kh]: each candidate's half-size neighbours
        shared = ((cand[..., None] == members[:, None, None, :]).any(-1) & cand_in).sum(-1)
        accept = r & (shared > 2.0 / 3 * cand_in.sum(-1))  # torchreid's exact comparison
        added = np.where(accept[..., None] & cand_in, cand, -1).reshape(len(f), -1)
        sets.append(np.concatenate([members, added], axis=1))
    return _unique_rows(sets, n)


def _reciprocal(knn: np.ndarray, chunk: int) -> np.ndarray:
    """[N, K] booleans: item i is among the K nearest of its a-th nearest item."""
    out = np.empty(knn.shape, dtype=bool)
    for s in range(0, len(knn), chunk):
        block = knn[s : s + chunk]
        out[s : s + chunk] = (knn[block] == np.arange(s, s + len(block))[:, None, None]).any(-1)
    return out


def _unique_rows(blocks: list[np.ndarray], n: int) -> _Sparse:
    """Padded rows of item indices (-1 = none, duplicates allowed) as a sorted CSR pattern."""
    ptrs, cols = [np.zeros(1, dtype=np.int64)], []
    for block in blocks:
        block = np.sort(block, axis=1)
        keep = block >= 0
        keep[:, 1:] &= block[:, 1:] != block[:, :-1]
        cols.append(block[keep])
        ptrs.append(ptrs[-1][-1] + np.cumsum(keep.sum(axis=1)))
    return _Sparse(np.concatenate(ptrs), np.concatenate(cols), np.empty(0))


def _mean_rows(v: _Sparse, knn: np.ndarray, n: int, chunk: int = 4096) -> _Sparse:
    """Local query expansion (step 4): row i becomes the mean of the rows of knn[i]."""
    ptrs, cols, vals = [np.zeros(1, dtype=np.int64)], [], []
    for s in range(0, len(knn), chunk):
        block = knn[s : s + chunk]
        pos, lengths = v.gather(block.ravel())
        owner = np.repeat(np.repeat(np.arange(len(block)), block.shape[1]), lengths)
        order = np.argsort(owner * n + v.col[pos], kind="stable")
        key = (owner * n + v.col[pos])[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else key
        unique = key[starts]
        cols.append(unique % n)
        vals.append(np.add.reduceat(v.val[pos][order], starts) / block.shape[1] if len(key) else v.val[:0])
        ptrs.append(ptrs[-1][-1] + np.cumsum(np.bincount(unique // n, minlength=len(block))))
    return _Sparse(np.concatenate(ptrs), np.concatenate(cols), np.concatenate(vals))


def _gallery_index(v: _Sparse, n_query: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gallery rows of V by column: for item l, which gallery items (0-based) have V[g, l]
    non-zero, and the values (column pointer, gallery row, value)."""
    start = v.ptr[n_query]
    owner = np.repeat(np.arange(n - n_query), np.diff(v.ptr[n_query:]))
    cols = v.col[start:]
    order = np.argsort(cols, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))])
    return ptr, owner[order], v.val[start:][order]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of range(starts[i], starts[i] + lengths[i])."""
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


def _safe(far2: np.ndarray) -> np.ndarray:
    """Normalisers with 0 (an item at distance 0 from everything) replaced by 1: O = 0 there."""
    return np.where(far2 > 0, far2, 1.0)
