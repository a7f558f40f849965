"""``open_clip:<arch>/<pretrained>``: open_clip's image tower, its ``encode_image`` output.

The spec reads open_clip's own preprocess config (the architecture's, merged with the pretrained
tag's mean, std, interpolation and resize mode, as ``create_model`` merges them) and builds the
architecture with the tag's QuickGELU setting (open_clip itself only warns when they disagree).
open_clip's eval transform resizes the short side and centre-crops: reidray's ``resize=crop`` is
exactly that for its square inputs; the default is the registry's squash. Only the image tower is
kept and counted. Weights: the tag's hub repo (``open_clip_model.safetensors``) or its file URL.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch

from reidray.models.references import Reference, count_params, make_spec, output_dim
from reidray.models.references import common_weights
from reidray.models.references.wrap import ReferenceEncoder
from reidray.models.registry import ModelSpec

_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _split(ref: Reference) -> tuple[str, str, dict]:
    """(arch, tag, the tag's pretrained cfg); an unknown one fails listing what exists."""
    arch, _, tag = ref.target.partition("/")
    if arch not in open_clip.list_models():
        similar = [m for m in open_clip.list_models() if arch.lower()[:5] in m.lower()][:6]
        raise ref.fail(f"tried open_clip.list_models() of open_clip {open_clip.__version__}: no {arch!r}; "
                       f"architectures like it: {', '.join(similar) or 'none'}")
    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ref.fail(f"tried open_clip.get_pretrained_cfg({arch!r}, {tag!r}): no such pretrained tag; write "
                       f"open_clip:{arch}/<tag> with one of: {', '.join(tags) or 'none (this architecture has no release)'}")
    return arch, tag, cfg


def _create(arch: str, cfg: dict, **kw) -> torch.nn.Module:
    preprocess = {k: cfg[k] for k in _PREPROCESS_KEYS if k in cfg}
    quiet = kw.get("pretrained") is None  # open_clip logs a warning for every architecture built without weights
    previous = logging.root.manager.disable
    if quiet:
        logging.disable(logging.WARNING)
    try:
        return open_clip.create_model(arch, force_quick_gelu=bool(cfg.get("quick_gelu", False)),
                                      force_preprocess_cfg=preprocess, **kw)
    finally:
        logging.disable(previous)


def spec(ref: Reference) -> ModelSpec:
    arch, tag, cfg = _split(ref)
    visual = _create(arch, cfg, pretrained=None, device="meta").visual
    pp = visual.preprocess_cfg
    size = tuple(pp["size"]) if isinstance(pp["size"], (tuple, list)) else (pp["size"],) * 2
    hub = (cfg.get("hf_hub") or "").strip("/")
    if hub:
        where = dict(weights_id=hub, weights_files=("open_clip_model.safetensors",),
                     weights_url=f"https://huggingface.co/{hub}")
    else:
        where = dict(weights_id=Path(urlparse(cfg.get("url", "")).path).name, weights_url=cfg.get("url", ""))
    return make_spec(
        ref, input_size=size, interpolation=pp["interpolation"], mean=pp["mean"], std=pp["std"],
        dim=output_dim(visual, visual, size), params=count_params(visual), library="open_clip",
        version=open_clip.__version__, arch=f"{arch}/{tag}", embedding="encode_image (the image tower's output)",
        config={"pretrained_cfg": {k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool, tuple, list))},
                "preprocess_cfg": dict(pp)},
        needs_weights=True, **where,
    )


def resolve_weights(spec: ModelSpec, weights: str | Path | None) -> Path:
    return common_weights.resolve(spec, weights)


def weights_status(spec: ModelSpec, weights: str | Path | None) -> tuple[bool, str]:
    return common_weights.status(spec, weights)


def build(ref: Reference, spec: ModelSpec, path: Path | None, *, weights: str | Path | None,
          random_init: bool) -> ReferenceEncoder:
    arch, _, cfg = _split(ref)
    pretrained = None if path is None else str(path)
    model = _create(arch, cfg, pretrained=pretrained, require_pretrained=pretrained is not None)
    return ReferenceEncoder(spec, model.visual, _forward, random_init=pretrained is None)


def _forward(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return visual(pixels)
