"""OSNet-x1.0 (Zhou et al., ICCV 2019), through torchreid, with its model-zoo Market-1501 weights.

Why torchreid: it is OSNet's home (the authors' library) and the source of the released weights.
The embedding is the eval-mode output: global average pool, then the fc block (Linear 512->512,
BatchNorm1d, ReLU), 512-d, non-negative and not normalised; torchreid scores it with euclidean
distance on raw features, and so does the registry.

The zoo files also hold numpy scalars (the run's rank-1): ``torchfile.load`` reads them with
``weights_only=True`` and an allow-list of exactly those numpy globals.

Loading is strict: the checkpoint's classifier (sized to the training set's ids) is the only key
dropped, by name; anything missing or mis-shaped is an error. (torchreid's own
``load_pretrained_weights`` skips mismatched keys with a warning, the study's silent failure mode.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from reidray.errors import ReidrayError
from reidray.models import torchfile
from reidray.models.checks import check_shapes
from reidray.models.encoder import Encoder
from reidray.models.registry import ModelSpec


def _torchreid_models():
    with warnings.catch_warnings():  # torchreid warns at import that its Cython ranker is absent
        warnings.simplefilter("ignore")
        from torchreid import models
    return models


def backbone(arch: str) -> nn.Module:
    """torchreid's network without its training classifier (eval mode never uses it)."""
    model = _torchreid_models().build_model(name=arch, num_classes=1, loss="softmax", pretrained=False)
    model.classifier = nn.Identity()
    return model


class OsnetEncoder(Encoder):
    """torchreid's OSNet; ``model`` keeps torchreid's parameter names."""

    def __init__(self, spec: ModelSpec, model: nn.Module, *, random_init: bool) -> None:
        super().__init__(spec, random_init=random_init)
        self.model = model

    def features(self, pixels: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        if self.model.training:
            raise RuntimeError("OSNet returns logits in training mode; call .eval()")
        return self.model(pixels)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A torchreid checkpoint's state dict, unwrapped, without a DataParallel ``module.`` prefix."""
    try:
        state = torchfile.load(path)
    except Exception as exc:
        raise ReidrayError(f"OSNet checkpoint {path} does not load with torch.load: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def build(spec: ModelSpec, path: Path | None, *, random_init: bool) -> OsnetEncoder:
    """OSNet from a torchreid checkpoint (strict but for the classifier), or random."""
    model = backbone(spec.arch)
    if random_init or path is None:
        return OsnetEncoder(spec, model, random_init=True)
    state = {k: v for k, v in read_checkpoint(path).items() if not k.startswith("classifier.")}
    check_shapes(spec.name, path, {k: tuple(v.shape) for k, v in state.items()},
                 {k: tuple(v.shape) for k, v in model.state_dict().items()}, spec.arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ReidrayError(f"model {spec.name}: {path} does not match torchreid's {spec.arch}: {detail[:400]}") from exc
    return OsnetEncoder(spec, model, random_init=False)
