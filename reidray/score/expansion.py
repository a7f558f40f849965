"""Average query expansion (AQE; Chum et al., ICCV 2007), with fast-reid's definition.

fast-reid's ``aqe(query_feat, gallery_feat, qe_times, qe_k, alpha)`` expands queries and gallery
alike: each of the N = Q + G items is replaced by the mean, over its ``k`` most cosine-similar
items (itself included), of their features weighted by similarity**alpha; repeated ``times``
times, each round ranking by the previous round's features. The features are averaged as given
(not normalised), so the result feeds either metric. fast-reid computes the N x N similarity
matrix; here the neighbours come from ``neighbours.nearest`` in tiles, and the weights from the
selected pairs' dot products, so memory stays O(N * (D + k)).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reidray.score.neighbours import PairDistances, nearest
from reidray.score.options import parse_options

ROWS = 4096  # items expanded at once: [ROWS, k, D] gathered features


@dataclass(frozen=True)
class AqeOptions:
    """fast-reid's ``qe_k``, ``alpha`` and ``qe_times`` (its test defaults: 5, 3.0, 1)."""

    k: int = 5
    alpha: float = 3.0
    times: int = 1

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> AqeOptions:
        """From ``evaluate(aqe=...)``: unknown keys and out-of-range values are errors."""
        parsed = parse_options(cls, options, "query-expansion", ("k", "times"))
        if not np.isfinite(float(parsed.alpha)):
            raise ValueError(f"query-expansion alpha must be a finite number, got {parsed.alpha!r}")
        return parsed


def expand(qf: torch.Tensor, gf: torch.Tensor, options: AqeOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """The expanded query and gallery features (same dtype and device as given)."""
    x = torch.cat([qf, gf])
    for _ in range(options.times):
        cosine = PairDistances(x, "cosine")
        index = nearest(cosine, options.k).index
        k = index.shape[1]
        owner = np.repeat(np.arange(len(x)), k)
        weights = cosine.dots(owner, index.ravel()).pow_(options.alpha).view(len(x), k, 1)
        picked = torch.from_numpy(index).to(x.device)
        x = torch.cat(
            [(x[picked[s : s + ROWS]] * weights[s : s + ROWS]).mean(dim=1) for s in range(0, len(x), ROWS)]
        )
    return x[: len(qf)], x[len(qf) :]
