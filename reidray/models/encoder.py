"""The Encoder interface every model implements (docs/contracts.md, Models)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from reidray.models.registry import ModelSpec


class Encoder(nn.Module):
    """A model's image -> embedding path, with its spec and whether its weights are random.

    Subclasses implement :meth:`features`; :meth:`forward` applies the L2 normalisation the
    spec promises, so that decision lives in one place (the registry entry) and no model can
    forget it. ``random_init`` travels with the encoder into every output row and report.
    ``use_camera`` (set by ``build`` from the dataset, ``registry.uses_camera_ids``) says whether
    camera ids reach :meth:`features`; when it is False they are dropped here, in one place.
    """

    def __init__(self, spec: ModelSpec, *, random_init: bool) -> None:
        super().__init__()
        self.spec = spec
        self.random_init = random_init
        self.use_camera = False

    def features(self, pixels: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        """The raw embedding [N, spec.dim] of normalised pixels [N, 3, H, W]."""
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        """Embed a batch already normalised with ``spec.mean``/``spec.std``; float32 [N, spec.dim]."""
        h, w = self.spec.input_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, h, w):
            raise ValueError(
                f"model {self.spec.name}: expected pixels [N, 3, {h}, {w}], got {tuple(pixels.shape)}"
            )
        if self.use_camera and camids is None:
            raise ValueError(
                f"model {self.spec.name}: built for {self.spec.trained_on}'s cameras, but no camera ids given"
            )
        out = self.features(pixels, camids if self.use_camera else None).float()
        return F.normalize(out, dim=-1) if self.spec.normalize else out

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, random_init={self.random_init}, use_camera={self.use_camera}"
