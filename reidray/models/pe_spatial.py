"""PE-Spatial-S16-512 (Meta's Perception Encoder, spatial variant), through timm.

Why timm: it is the only maintained PyPI library that defines PE-Spatial (open_clip has the PE-Core
CLIP models only; Meta's ``perception_models`` is not a package). Its loader also converts Meta's
original ``PE-Spatial-S16-512.pt`` layout, so an explicit path to either that file or timm's
``model.safetensors`` works, strictly checked, after its shapes are checked against the
registry's architecture (``checks``).

PE-Spatial is a dense-feature model with no pooled embedding (no final norm, no projection).
The embedding is the study's: the mean of all 1,025 output tokens (CLS and the 32x32 patches),
384-d, not normalised; the registry compares it by cosine.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from reidray.models.checks import check_shapes, file_shapes
from reidray.models.encoder import Encoder
from reidray.models.registry import ModelSpec


class PeSpatialEncoder(Encoder):
    """A timm PE-Spatial trunk; the embedding is the mean of its output tokens."""

    def __init__(self, spec: ModelSpec, model: torch.nn.Module, *, random_init: bool) -> None:
        super().__init__(spec, random_init=random_init)
        self.model = model

    def features(self, pixels: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        return self.model.forward_features(pixels).mean(dim=1)


def build(spec: ModelSpec, path: Path | None, *, random_init: bool) -> PeSpatialEncoder:
    """timm's model from the local file (strict load), or random."""
    if random_init or path is None:
        return PeSpatialEncoder(spec, timm.create_model(spec.arch, pretrained=False), random_init=True)
    # timm resamples a position or patch embedding of another size to fit: check the file first
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in timm.create_model(spec.arch, pretrained=False).state_dict().items()}
    check_shapes(spec.name, path, file_shapes(path), ours, spec.arch)
    model = timm.create_model(spec.arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    return PeSpatialEncoder(spec, model, random_init=False)
