"""Architecture checks: a weights file must hold the architecture the registry entry names.

Libraries load a file of another size more often than one would think: transformers builds
whatever its ``config.json`` says (a 2-layer, 384-wide DINOv2 embeds at 384-d as ``dinov2-b14``),
and open_clip and timm resample a position embedding of another grid to fit. So before loading,
the file's tensor shapes (or its config) are compared with the architecture the registry names,
and a difference fails with one line naming the model, the file and what differs, in the terms
that matter (width, depth, patch size, image size, embedding dimension).

The shapes are read without loading the tensors (the safetensors header, or a memory-mapped
``torch.load``); the facts are read from the parameter names of every library reidray uses
(open_clip, timm, transformers, CLIP-ReID's OpenAI layout, Meta's PE files).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

from reidray.errors import ReidrayError

Shapes = Mapping[str, tuple[int, ...]]

_BLOCK = re.compile(r"(?:^|\.)(?:resblocks|blocks|layers?)\.(\d+)\.")
_PATCH = ("conv1.weight", "patch_embed.proj.weight", "patch_embeddings.projection.weight", "patch_embedding.weight")
_POSITIONS = ("positional_embedding", "pos_embed", "position_embeddings", "position_embedding.weight")
_PROJECTION = ("proj",)  # OpenAI-layout image projection [width, embedding dim]


def file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a checkpoint file, without reading the tensors' data."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    from reidray.models import torchfile

    state = torchfile.load(path, mmap=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        return {}
    return {k.removeprefix("module."): tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def facts(shapes: Shapes, prefix: str = "") -> dict[str, str]:
    """The architecture read from parameter shapes: width, depth, patch size, image size, dimension."""
    tower = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    out: dict[str, str] = {}
    blocks = {m.group(1) for k in tower for m in [_BLOCK.search(k)] if m}
    if blocks:
        out["depth"] = str(len(blocks))
    patch = next((v for k, v in tower.items() if k.endswith(_PATCH) and len(v) == 4 and v[1] == 3), None)
    if patch is not None:
        out["width"] = str(patch[0])
        out["patch size"] = "x".join(map(str, patch[2:])) if patch[2] != patch[3] else str(patch[2])
    pos = next((v for k, v in tower.items() if k.endswith(_POSITIONS) and not _BLOCK.search(k)), None)
    if pos is not None and len(pos) >= 2:
        out["image size"] = _image_size(pos[-2], patch[2] if patch is not None else 0)
    proj = next((v for k, v in tower.items() if k in _PROJECTION and len(v) == 2), None)
    if proj is not None:
        out["embedding dimension"] = str(proj[1])
    return out


def _image_size(tokens: int, patch: int) -> str:
    """The square image a position table fits (with or without a class token), else its length."""
    for grid_tokens in (tokens - 1, tokens):
        side = math.isqrt(max(grid_tokens, 0))
        if patch and side * side == grid_tokens and side:
            return str(side * patch)
    return f"{tokens} positions"


def check_shapes(model: str, path: Path, theirs: Shapes, ours: Shapes, arch: str, prefix: str = "") -> None:
    """Fail when ``theirs`` (the file) is not ``ours`` (the registry's architecture), saying how."""
    mine, found = facts(ours, prefix), facts(theirs, prefix)
    differ = [f"{name} {found[name]} (registry {value})" for name, value in mine.items()
              if name in found and found[name] != value]
    if not differ:
        differ = [f"{k} is {list(theirs[k])} (registry {list(ours[k])})"
                  for k in ours if k in theirs and tuple(theirs[k]) != tuple(ours[k])][:2]
    if differ:
        raise ArchitectureError(model, path, arch, differ)


def check_config(model: str, path: Path, theirs: Mapping[str, object], ours: Mapping[str, object],
                 arch: str) -> None:
    """Fail when a config file's architecture fields differ from the registry's config."""
    differ = [f"{k} {theirs.get(k)} (registry {v})" for k, v in ours.items() if theirs.get(k) != v]
    if differ:
        raise ArchitectureError(model, path, arch, differ)


class ArchitectureError(ReidrayError):
    """A weights file of another architecture than the registry entry's."""

    def __init__(self, model: str, path: Path, arch: str, differ: list[str]) -> None:
        super().__init__(
            f"model {model}: {path} is not the registry's {arch}: {', '.join(differ)}; "
            "give the weights of this model (python -m reidray.run weights lists them)"
        )
