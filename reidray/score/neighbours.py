"""Exact k nearest neighbours of every item of a set among the same set, in bounded memory.

Re-ranking and query expansion both need, for each of N = Q + G items, its few nearest items
(and re-ranking its farthest distance). The references get them by argsorting a full N x N
matrix; here the N x N distances are visited once in square tiles of the upper triangle (the
matrix is symmetric: each tile serves its rows and, transposed, its columns), keeping a running
top-k per item. Memory: the features, one tile and the [N, k] result, whatever N is.

Distances are torchreid's ``compute_distance_matrix``: ``cosine`` = 1 - cosine similarity of
L2-normalised features, ``euclidean`` = squared Euclidean distance. Items are ordered by the
*square* of that distance (what ``re_ranking`` sorts: it squares its input first; the same
order as the distance itself wherever the distance is non-negative).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TILE = 4096  # tile side: 4096**2 float32 = 64 MiB


@dataclass(frozen=True)
class Neighbours:
    """``index[i]``: the k nearest items of item i, nearest first (usually i itself);
    ``far2[i]``: the largest squared distance from i to any item (re-ranking's normaliser)."""

    index: np.ndarray  # [N, k] int64
    far2: np.ndarray  # [N] float64


class PairDistances:
    """Distances between items of one feature set, for tiles or for listed pairs."""

    def __init__(self, x: torch.Tensor, metric: str) -> None:
        self.metric = metric
        self.x = F.normalize(x, dim=1) if metric == "cosine" else x
        self.sq = torch.einsum("ij,ij->i", self.x, self.x) if metric == "euclidean" else None
        self.host = self.x.numpy() if self.x.device.type == "cpu" else None

    def __len__(self) -> int:
        return len(self.x)

    def block(self, rows: slice, cols: slice) -> torch.Tensor:
        """[R, C] distances. On the CPU the product goes through numpy's BLAS (faster than
        torch's here, see metrics._Gallery); -2 scales the smaller operand before it."""
        a, b = self.x[rows], self.x[cols]
        scale = -1.0 if self.metric == "cosine" else -2.0
        if self.host is not None:
            prod = torch.from_numpy((scale * self.host[rows]) @ self.host[cols].T)
        else:
            prod = torch.mm(scale * a, b.T)
        if self.metric == "cosine":
            return prod.add_(1.0)
        return prod.add_(self.sq[rows][:, None]).add_(self.sq[cols][None, :])

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Distances of the listed pairs (i[n], j[n]), as float64."""
        dot = self.dots(i, j)
        d = 1.0 - dot if self.metric == "cosine" else self.sq[i] + self.sq[j] - 2.0 * dot
        return d.double().cpu().numpy()

    def dots(self, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 14) -> torch.Tensor:
        """Dot products of the listed pairs' (normalised, for cosine) features. On the CPU with
        numpy (its gathers and row products are ~3x faster than torch's here)."""
        if self.host is not None:
            h = self.host
            parts = [np.einsum("ij,ij->i", h[i[s : s + chunk]], h[j[s : s + chunk]]) for s in range(0, len(i), chunk)]
            return torch.from_numpy(np.concatenate(parts) if parts else np.empty(0, dtype=h.dtype))
        i, j = torch.from_numpy(i).to(self.x.device), torch.from_numpy(j).to(self.x.device)
        out = torch.empty(len(i), dtype=self.x.dtype, device=self.x.device)
        for s in range(0, len(i), chunk):
            out[s : s + chunk] = torch.einsum("ij,ij->i", self.x[i[s : s + chunk]], self.x[j[s : s + chunk]])
        return out


def nearest(dist: PairDistances, k: int) -> Neighbours:
    """Every item's ``k`` nearest items (k is capped at N) and largest squared distance."""
    n, tile = len(dist), TILE
    k = min(k, n)
    device = dist.x.device
    best_d = torch.full((n, k), float("inf"), dtype=dist.x.dtype, device=device)
    best_i = torch.zeros((n, k), dtype=torch.int64, device=device)
    far2 = torch.zeros(n, dtype=dist.x.dtype, device=device)
    starts = range(0, n, tile)
    for a in starts:
        rows = slice(a, min(a + tile, n))
        for b in starts:
            if b < a:
                continue
            cols = slice(b, min(b + tile, n))
            d2 = dist.block(rows, cols).square_()
            _merge(best_d, best_i, far2, rows, d2, b, k)
            if b != a:
                _merge(best_d, best_i, far2, cols, d2, a, k, transposed=True)
    order = best_d.argsort(dim=1)
    index = best_i.gather(1, order)
    return Neighbours(index.cpu().numpy(), far2.double().cpu().numpy())


def _merge(
    best_d: torch.Tensor,
    best_i: torch.Tensor,
    far2: torch.Tensor,
    items: slice,
    d2: torch.Tensor,
    offset: int,
    k: int,
    transposed: bool = False,
) -> None:
    """Fold one tile into the running top-k and maximum of ``items``: the tile's rows (its
    columns if ``transposed``), against candidates numbered from ``offset``. Once every item
    holds k candidates, only tile entries below an item's current k-th distance can enter:
    those few are found by one comparison pass and merged, so most tiles cost a few passes
    over memory rather than a top-k selection."""
    axis = 0 if transposed else 1
    far2[items] = torch.maximum(far2[items], d2.amax(dim=axis))
    kth = best_d[items].amax(dim=1)
    if torch.isinf(kth).any():  # items still filling up: a full top-k of the tile
        rows = d2.T.contiguous() if transposed else d2
        cand_d, cand_i = torch.topk(rows, min(k, rows.shape[1]), dim=1, largest=False, sorted=False)
    else:
        mask = d2 < (kth[None, :] if transposed else kth[:, None])
        if mask.device.type == "cpu":  # numpy's flat search is ~20x faster than nonzero here
            flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
        else:
            flat = mask.view(-1).nonzero().squeeze(1)
        if len(flat) == 0:
            return
        r, c = flat // d2.shape[1], flat % d2.shape[1]
        item, cand, value = *((c, r) if transposed else (r, c)), d2[r, c]
        if transposed:  # group by item (the flat search already does for rows)
            order = torch.argsort(item, stable=True)
            item, cand, value = item[order], cand[order], value[order]
        counts = torch.bincount(item, minlength=len(kth))
        slot = torch.arange(len(item), device=item.device) - (counts.cumsum(0) - counts)[item]
        cand_d = torch.full((len(kth), int(counts.max())), float("inf"), dtype=d2.dtype, device=d2.device)
        cand_i = torch.zeros(cand_d.shape, dtype=torch.int64, device=d2.device)
        cand_d[item, slot], cand_i[item, slot] = value, cand
    vals = torch.cat([best_d[items], cand_d], dim=1)
    idx = torch.cat([best_i[items], cand_i.add_(offset)], dim=1)
    keep = torch.topk(vals, k, dim=1, largest=False, sorted=False).indices
    best_d[items] = vals.gather(1, keep)
    best_i[items] = idx.gather(1, keep)
