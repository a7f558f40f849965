"""The Encoder around a referenced model: the library's module and the call that embeds with it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from reidray.models.encoder import Encoder
from reidray.models.registry import ModelSpec


class ReferenceEncoder(Encoder):
    """``model`` keeps the library's parameter names; ``embed(model, pixels)`` is the library's own call."""

    def __init__(self, spec: ModelSpec, model: torch.nn.Module, embed: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
                 *, random_init: bool) -> None:
        super().__init__(spec, random_init=random_init)
        self.model = model
        self._embed = embed

    def features(self, pixels: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        return self._embed(self.model, pixels)
