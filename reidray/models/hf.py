"""SigLIP2 ViT-B/16 (256, 384) and DINOv2 B/14, L/14, through transformers.

Why transformers: both are published as transformers checkpoints by their authors (Google's
``google/siglip2-base-patch16-*``, Meta's ``facebook/dinov2-*``), and it is a maintained library
with a pinned release, unlike the study's ``torch.hub`` DINOv2 load, which fetches the unpinned
``main`` branch of a GitHub repository at run time. Its SigLIP vision model is what the study
called through ``get_image_features``.

DINOv2 as released. The weights hold a 37x37 position table (518 px); at reidray's 224 px input it
is resized to 16x16. The released model (facebookresearch/dinov2 ``vit_base``/``vit_large`` with
the hub builders' arguments: patch 14, img_size 518, init_values 1.0, block_chunks 0,
interpolate_antialias False, interpolate_offset 0.1) resizes it bicubically by the *scale factor*
(16 + 0.1) / 37, so its samples sit where that scale puts them; transformers' Dinov2 resizes to
the *size* 16x16, which samples other points (at random init its embeddings sit at cosine
0.99993 of the original's in the issue-15 review, 0.9999995 with the test's smaller random
tables; the effect with the trained weights is not measured). ``ReleasedDinov2Model`` is
transformers' model with the original's rule, so its embedding equals the released model's
(tests/test_models_dinov2.py: largest difference 8e-8 on L2-normalised ViT-B/14 embeddings of
converted random weights, bound 1e-5).

Embeddings: SigLIP's ``pooler_output`` (the attention-pool head, 768-d; ``get_image_features``);
DINOv2's ``pooler_output`` (the final-LayerNorm CLS token, the original's ``x_norm_clstoken``).

Loading: ``from_pretrained`` on the local folder (config.json + model.safetensors), never the
network, once its config.json is checked against the registry's architecture (the configs
below); a missing or mis-shaped key is an error, and the only keys allowed to go unused are
SigLIP's text tower. The configs below are the published ones, used for random-init builds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    Dinov2Config,
    Dinov2Model,
    PretrainedConfig,
    SiglipConfig,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

from reidray.errors import ReidrayError
from reidray.models.checks import check_config
from reidray.models.encoder import Encoder
from reidray.models.registry import ModelSpec

_SIGLIP2_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
_SIGLIP2_TEXT = dict(vocab_size=256000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                     layer_norm_eps=1e-6)
_DINOV2_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)
_DINOV2_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16)
_DINOV2_COMMON = dict(image_size=518, patch_size=14, mlp_ratio=4, layerscale_value=1.0, layer_norm_eps=1e-6,
                      hidden_act="gelu", use_swiglu_ffn=False, qkv_bias=True)

INTERPOLATE_OFFSET = 0.1  # the released hub builders' interpolate_offset (antialias off)


class ReleasedDinov2Embeddings(Dinov2Embeddings):
    """transformers' DINOv2 embeddings, with the released model's position-table resize."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        table = self.position_embeddings
        n_grid = table.shape[1] - 1
        rows, cols = height // self.patch_size, width // self.patch_size
        if rows * cols == n_grid and height == width:
            return table
        side = math.isqrt(n_grid)
        grid = table[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        scale = ((rows + INTERPOLATE_OFFSET) / side, (cols + INTERPOLATE_OFFSET) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        if tuple(grid.shape[-2:]) != (rows, cols):
            raise ValueError(f"DINOv2 position table resized to {tuple(grid.shape[-2:])}, wanted {(rows, cols)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([table[:, :1].float(), grid], dim=1).to(embeddings.dtype)


class ReleasedDinov2Model(Dinov2Model):
    """transformers' Dinov2Model (same parameters, same checkpoints) resizing positions as released."""

    def __init__(self, config: Dinov2Config) -> None:
        super().__init__(config)
        # a method override only (no state): the built, initialised module keeps its parameters
        self.embeddings.__class__ = ReleasedDinov2Embeddings


# name -> (model class, config) as published on the hub
_ARCH: dict[str, tuple[type[torch.nn.Module], Callable[[], PretrainedConfig]]] = {
    "siglip2-b16-256": (SiglipVisionModel, lambda: SiglipVisionConfig(image_size=256, **_SIGLIP2_VISION)),
    "siglip2-b16-384": (SiglipVisionModel, lambda: SiglipVisionConfig(image_size=384, **_SIGLIP2_VISION)),
    "dinov2-b14": (ReleasedDinov2Model, lambda: Dinov2Config(**_DINOV2_BASE, **_DINOV2_COMMON)),
    "dinov2-l14": (ReleasedDinov2Model, lambda: Dinov2Config(**_DINOV2_LARGE, **_DINOV2_COMMON)),
}
# checkpoint keys the vision model may leave unused: SigLIP's text tower and contrastive scales
_UNUSED_OK = ("text_model.", "logit_scale", "logit_bias")


def full_config(spec: ModelSpec) -> PretrainedConfig:
    """The whole published model's config (SigLIP: image + text towers), for parameter counts."""
    cls, make = _ARCH[spec.name]
    if cls is SiglipVisionModel:
        return SiglipConfig(text_config=_SIGLIP2_TEXT, vision_config=make().to_dict())
    return make()


class HfEncoder(Encoder):
    """A transformers vision model; the embedding is its ``pooler_output``."""

    def __init__(self, spec: ModelSpec, model: torch.nn.Module, *, random_init: bool) -> None:
        super().__init__(spec, random_init=random_init)
        self.model = model

    def features(self, pixels: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        return self.model(pixel_values=pixels).pooler_output


# the config fields that make the architecture; a folder's config.json must agree with the registry's
_ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size",
                "intermediate_size", "mlp_ratio", "use_swiglu_ffn", "layerscale_value")


def _check_config(spec: ModelSpec, cls: type, folder: Path, published: PretrainedConfig) -> None:
    """transformers builds whatever config.json says: check it is the registry's architecture first."""
    found = cls.config_class.from_pretrained(folder, local_files_only=True).to_dict()
    ours = {k: v for k, v in published.to_dict().items() if k in _ARCH_FIELDS}
    check_config(spec.name, folder / "config.json", found, ours, spec.arch)


def _load(spec: ModelSpec, cls: type, folder: Path) -> torch.nn.Module:
    model, info = cls.from_pretrained(
        folder, local_files_only=True, output_loading_info=True, dtype=torch.float32
    )
    missing = list(info.get("missing_keys", ())) + [str(k) for k in info.get("mismatched_keys", ())]
    unused = [k for k in info.get("unexpected_keys", ()) if not k.startswith(_UNUSED_OK)]
    if missing or unused:
        raise ReidrayError(
            f"model {spec.name}: {folder} does not match {cls.__name__}: "
            f"missing/mismatched {missing[:5]}, unexpected {unused[:5]}"
        )
    return model


def build(spec: ModelSpec, path: Path | None, *, random_init: bool) -> HfEncoder:
    """The vision model from the local checkpoint folder, or random from the published config."""
    cls, make = _ARCH[spec.name]
    if random_init or path is None:
        return HfEncoder(spec, cls(make()), random_init=True)
    _check_config(spec, cls, path, make())
    return HfEncoder(spec, _load(spec, cls, path), random_init=False)
