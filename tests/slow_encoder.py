"""A test-only encoder that takes its time: ``python:slow_encoder:build`` (reidray.models.references).

The node-loss tests need a cell that is still being embedded when they kill a node. This encoder is
the README's colour-grid example plus a pause per batch, so a small synthetic dataset takes seconds
instead of milliseconds; each image's embedding depends only on that image, so a run that lost and
retried batches must give exactly the numbers of a clean run. Importable where tests put this folder
on PYTHONPATH (tests/raycluster.py does, for every node it starts).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

PAUSE_S = 0.25  # per batch: 8-image batches of a 30-identity dataset take ~15 s on one node


class SlowColourGrid(torch.nn.Module):
    input_size = (128, 64)
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    interpolation = "bilinear"
    metric = "cosine"
    normalize = True
    dim = 3 * 16 * 8

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        time.sleep(PAUSE_S)
        return F.adaptive_avg_pool2d(pixels, (16, 8)).flatten(1)


def build() -> SlowColourGrid:
    return SlowColourGrid()
