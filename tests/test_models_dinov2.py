"""reidray's DINOv2 embedding equals the released model's (facebookresearch/dinov2, hub builders).

The reference below is written from the published definition of ``DinoVisionTransformer``
(``dinov2/models/vision_transformer.py``) built as the hub's ``dinov2_vitb14``/``dinov2_vitl14``
build it (patch 14, img_size 518, init_values 1.0, block_chunks 0, no registers,
interpolate_antialias False, interpolate_offset 0.1): patch conv, class token, position table
resized bicubically by the scale factor (grid + offset) / 37, pre-norm blocks with fused qkv
attention, layer scale and a GELU MLP, final LayerNorm, output ``x_norm_clstoken``. Its random
weights, in the released key layout, are converted to transformers' layout (qkv split, layer
scale renamed), saved as a transformers folder, and loaded through ``build``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidray.models import build, get
from reidray.models.preprocess import prepare

SIZES = {"dinov2-b14": (768, 12, 12), "dinov2-l14": (1024, 24, 16)}  # width, depth, heads (vit_base, vit_large)
PATCH, IMG_SIZE, OFFSET = 14, 518, 0.1


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma1, self.gamma2 = nn.Parameter(torch.rand(dim) + 0.5), nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        weights = torch.einsum("bqhc,bkhc->bhqk", q, k).mul(1 / math.sqrt(d // self.heads)).softmax(-1)
        x = x + self.gamma1 * self.proj(torch.einsum("bhqk,bkhc->bqhc", weights, v).reshape(b, n, d))
        return x + self.gamma2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))


class _Released(nn.Module):
    """The released DINOv2 ViT's inference path, as its definition states it."""

    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.side = IMG_SIZE // PATCH  # 37
        self.patch = nn.Conv2d(3, dim, PATCH, PATCH)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 1 + self.side**2, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def positions(self, rows: int, cols: int) -> torch.Tensor:
        """The table for a rows x cols grid: unchanged at 37x37, else scaled by (grid + 0.1) / 37."""
        if rows == cols == self.side:
            return self.pos
        table = self.pos[0, 1:].T.reshape(1, -1, self.side, self.side)
        factors = ((rows + OFFSET) / self.side, (cols + OFFSET) / self.side)
        table = F.interpolate(table, scale_factor=factors, mode="bicubic", antialias=False)
        return torch.cat([self.pos[:, :1], table.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = self.patch(pixels)
        x = torch.cat([self.cls.expand(len(pixels), -1, -1), grid.flatten(2).transpose(1, 2)], dim=1)
        x = x + self.positions(*grid.shape[-2:])
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def transformers_state(self) -> dict[str, torch.Tensor]:
        """These weights under transformers' Dinov2Model names (its conversion: qkv split in three)."""
        state = {"embeddings.cls_token": self.cls, "embeddings.position_embeddings": self.pos,
                 "embeddings.mask_token": torch.zeros(1, self.cls.shape[-1]),
                 "embeddings.patch_embeddings.projection.weight": self.patch.weight,
                 "embeddings.patch_embeddings.projection.bias": self.patch.bias,
                 "layernorm.weight": self.norm.weight, "layernorm.bias": self.norm.bias}
        for i, blk in enumerate(self.blocks):
            at = f"encoder.layer.{i}."
            for part, w, b in zip(("q_proj", "k_proj", "v_proj"), blk.qkv.weight.chunk(3), blk.qkv.bias.chunk(3)):
                state |= {f"{at}attention.{part}.weight": w, f"{at}attention.{part}.bias": b}
            for ours, theirs in ((blk.proj, "attention.o_proj"), (blk.norm1, "norm1"), (blk.norm2, "norm2"),
                                 (blk.fc1, "mlp.fc1"), (blk.fc2, "mlp.fc2")):
                state |= {f"{at}{theirs}.weight": ours.weight, f"{at}{theirs}.bias": ours.bias}
            state |= {f"{at}layer_scale1.lambda1": blk.gamma1, f"{at}layer_scale2.lambda1": blk.gamma2}
        return {k: v.detach().clone() for k, v in state.items()}


def _with(cls: type, config, state: dict[str, torch.Tensor]) -> nn.Module:
    """``cls`` holding ``state``, built on the meta device (no random init of 86-304M weights)."""
    with torch.device("meta"):
        model = cls(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _check(name: str, tmp_path, person_crops) -> tuple[float, float]:
    """(largest difference to the released model, smallest cosine of transformers' own resize to it)."""
    from transformers import Dinov2Model

    from reidray.models import hf

    spec = get(name)
    torch.manual_seed(0)
    released = _Released(*SIZES[name]).eval()
    cls, make = hf._ARCH[name]
    _with(cls, make(), released.transformers_state()).save_pretrained(tmp_path / name)
    loaded = build(name, weights=tmp_path / name)
    pixels = prepare(person_crops(3), spec)
    with torch.no_grad():
        ours = loaded(pixels)
        reference = F.normalize(released(pixels), dim=-1)
        # the control: transformers' own resize (to the size, not by the scale) is measurably off
        plain = _with(Dinov2Model, loaded.model.config, released.transformers_state())
        library = F.normalize(plain(pixel_values=pixels).pooler_output, dim=-1)
        table = loaded.model.embeddings.position_embeddings
        assert loaded.model.embeddings.interpolate_pos_encoding(ours[:, None], IMG_SIZE, IMG_SIZE) is table
    error = float((ours - reference).abs().max())
    assert error < 1e-5
    assert float((library - reference).abs().max()) > 10 * error
    return error, float((library * reference).sum(-1).min())


def test_dinov2_b14_equals_the_released_model(tmp_path, person_crops):
    _check("dinov2-b14", tmp_path, person_crops)


@pytest.mark.slow
def test_dinov2_l14_equals_the_released_model(tmp_path, person_crops):
    _check("dinov2-l14", tmp_path, person_crops)
