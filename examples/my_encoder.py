"""An encoder of your own, for ``-m python:examples.my_encoder:build`` (reidray.models.references).

It needs no weights, so it runs anywhere: the image, normalised, averaged down to a 16 x 8 grid of
colours (a coarse appearance descriptor), 384 values compared by cosine. Replace ``embed`` with
your network's forward; keep the attributes, which tell reidray how to prepare the pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TinyColourGrid(torch.nn.Module):
    """The protocol reidray reads: input_size, mean, std, interpolation, metric, normalize, dim, embed."""

    input_size = (128, 64)  # (h, w) reidray resizes every crop to
    mean = (0.485, 0.456, 0.406)  # reidray normalises pixels in [0, 1] with these
    std = (0.229, 0.224, 0.225)
    interpolation = "bilinear"
    metric = "cosine"
    normalize = True  # reidray L2-normalises what embed returns
    dim = 3 * 16 * 8

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """float [N, 3, 128, 64], normalised -> float [N, 384]."""
        return F.adaptive_avg_pool2d(pixels, (16, 8)).flatten(1)


def build() -> TinyColourGrid:
    """The factory reidray calls (it may also take ``weights=`` and ``random_init=``)."""
    return TinyColourGrid()
