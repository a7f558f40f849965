"""Score a fusion of encoders: the weighted sum of their per-query standardised distances.

Encoders of different paradigms fail on different queries (the study's conclusion), so a fusion
can beat each member. Their distances live on different scales (cosine vs squared Euclidean, and
each encoder's spread), so each member's distances are standardised per query over the gallery
the query is ranked against, z = (d - mean) / std, before the weighted sum. Each member's
distance is the one reidray ranks it by (cosine: negated cosine similarity; euclidean: squared
Euclidean distance); z is unchanged by shifting or scaling it. A query whose distances are all
equal for a member gets z = 0 from that member. Memory: one query chunk per member at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from reidray.errors import CellError, UnknownNameError
from reidray.score.metrics import METRICS, _features, _Gallery, _Labels, _score


def evaluate_fused(
    members: Sequence[tuple[Any, Any, str]],
    weights: Sequence[float],
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    *,
    g_junk: Any = None,
    g_distractor: Any = None,
    camera_filter: bool = True,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
    cell: str = "fusion",
) -> dict[str, Any]:
    """``evaluate`` for a fusion: ``members`` are (query features, gallery features, metric) of
    the same images in the same order, one per encoder; ``weights`` one per member. The same
    labels, rules, ties and result dict as ``evaluate``."""
    if not members or len(weights) != len(members):
        raise CellError(f"cell {cell}: a fusion needs one weight per member, got {len(weights)} for {len(members)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    queries, galleries = [], []
    for qf, gf, metric in members:
        if metric not in METRICS:
            raise UnknownNameError("metric", metric, list(METRICS))
        qf, _ = _features(qf, "query", cell)
        gf, _ = _features(gf, "gallery", cell)
        if len(qf) != len(members[0][0]) or len(gf) != len(members[0][1]):
            raise CellError(
                f"cell {cell}: the members' query or gallery sets differ in size; fuse cells of one dataset"
            )
        queries.append(qf)
        galleries.append((gf, metric))
    n_query, n_gallery = len(queries[0]), len(galleries[0][0])
    labels = _Labels.check(
        q_pids, g_pids, q_camids, g_camids, n_query, n_gallery, g_junk, g_distractor, camera_filter, cell
    )
    keep = None if labels.keep is None else torch.from_numpy(labels.keep)
    scorers = [
        _Gallery(gf if keep is None else gf[keep], metric, torch.float32, device) for gf, metric in galleries
    ]

    def distances(start: int, stop: int) -> torch.Tensor:
        total = None
        for weight, qf, gallery in zip(weights, queries, scorers, strict=True):
            z = standardised(gallery.distances(qf[start:stop]))
            total = z * weight if total is None else total.add_(z, alpha=weight)
        return total

    return _score(labels, distances, max_rank, chunk_size, cell)


def standardised(d: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
    """One member's [C, G] distances as per-row z-scores (float64), mean and spread taken over
    the ``counted`` columns (a boolean [G]; None: all), the gallery the query is ranked against:
    rank lists standardise the junk images they also show with the statistics of the rest."""
    d = d.double()
    std, mean = torch.std_mean(d if counted is None else d[:, counted], dim=1, keepdim=True, correction=0)
    return (d - mean) / torch.where(std > 0, std, 1.0)
