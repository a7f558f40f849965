"""``timm:<name>[.<tag>]``: timm's model with ``num_classes=0``, whose output is the pooled features.

Preprocessing is timm's own: ``resolve_model_data_config`` (the ``pretrained_cfg`` of the tag:
input size, mean, std, interpolation). timm's eval transform also centre-crops (``crop_pct``);
reidray applies its aspect policy instead (squash unless ``resize=`` says otherwise), and records
``crop_pct`` in the cell's source facts. Weights: the tag's hub repo (``model.safetensors``) or
its file URL, resolved like a registered model's; loading is timm's (``pretrained_cfg_overlay``
with the local file), which drops the classifier for ``num_classes=0``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from reidray.models.references import Reference, count_params, make_spec, on_meta, output_dim
from reidray.models.references import common_weights
from reidray.models.references.wrap import ReferenceEncoder
from reidray.models.registry import ModelSpec


def _create(ref: Reference, **kw) -> torch.nn.Module:
    try:
        return timm.create_model(ref.target, num_classes=0, **kw)
    except RuntimeError as exc:  # timm: "Unknown model (...)" or an unknown pretrained tag
        arch = ref.target.split(".")[0]
        similar = timm.list_models(f"*{arch}*")[:5] or timm.list_models(f"{arch[:4]}*")[:5]
        raise ref.fail(
            f"tried timm.create_model({ref.target!r}, num_classes=0) with timm {timm.__version__}: "
            f"{str(exc).splitlines()[0]}; timm names like it: {', '.join(similar) or 'none'} "
            "(timm.list_models() / list_pretrained() list them all)"
        ) from None


def spec(ref: Reference) -> ModelSpec:
    model = on_meta(lambda: _create(ref, pretrained=False))
    data = timm.data.resolve_model_data_config(model)
    cfg = model.pretrained_cfg
    size = tuple(data["input_size"][1:])
    hub, url = cfg.get("hf_hub_id") or "", cfg.get("url") or ""
    if hub:
        where = dict(weights_id=hub, weights_files=("model.safetensors",), weights_url=f"https://huggingface.co/{hub}")
    elif url:
        where = dict(weights_id=Path(urlparse(url).path).name, weights_url=url)
    else:
        where = {}
    return make_spec(
        ref, input_size=size, interpolation=data["interpolation"], mean=data["mean"], std=data["std"],
        dim=output_dim(model, model, size), params=count_params(model), library="timm", version=timm.__version__,
        arch=f"{cfg.get('architecture', ref.target)}.{cfg.get('tag') or ''}".rstrip("."),
        embedding="forward with num_classes=0: the pooled pre-logits features",
        config={k: cfg.get(k) for k in ("architecture", "tag", "hf_hub_id", "url", "crop_pct", "crop_mode")},
        needs_weights=True, **where,
    )


def resolve_weights(spec: ModelSpec, weights: str | Path | None) -> Path:
    return common_weights.resolve(spec, weights)


def weights_status(spec: ModelSpec, weights: str | Path | None) -> tuple[bool, str]:
    return common_weights.status(spec, weights)


def build(ref: Reference, spec: ModelSpec, path: Path | None, *, weights: str | Path | None,
          random_init: bool) -> ReferenceEncoder:
    if path is None:
        return ReferenceEncoder(spec, _create(ref, pretrained=False), _forward, random_init=True)
    model = _create(ref, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    return ReferenceEncoder(spec, model, _forward, random_init=False)


def _forward(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return model(pixels)
