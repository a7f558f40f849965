"""OpenAI CLIP ViT-B/32, B/16, L/14 and PE-Core-L14-336, through open_clip.

Why open_clip: it is the maintained home of CLIP-style models. It loads OpenAI's released CLIP
weights (converted, under the hub ids in the registry) into the same QuickGELU architecture
OpenAI's own, unmaintained and not-on-PyPI ``clip`` package builds, and it ships Meta's
PE-Core checkpoints with the whole CLIP model (image and text towers), so the loader checks
every key of the released file. The study's OpenAI ``clip.load`` path ran in fp16 and
centre-cropped the crop; here the model runs on the squashed crop, in fp32 unless the job opts
into bf16/fp16 autocast.

The embedding is ``encode_image`` before normalisation: ln_post(CLS) @ proj for CLIP, the
attention-pooled projection for PE-Core. Only the image tower is kept after loading.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from reidray.errors import ReidrayError
from reidray.models.checks import check_shapes, file_shapes
from reidray.models.encoder import Encoder
from reidray.models.registry import ModelSpec


class OpenClipEncoder(Encoder):
    """An open_clip image tower; ``visual`` keeps open_clip's own parameter names."""

    def __init__(self, spec: ModelSpec, visual: torch.nn.Module, *, random_init: bool) -> None:
        super().__init__(spec, random_init=random_init)
        self.visual = visual

    def features(self, pixels: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        return self.visual(pixels)


def build(spec: ModelSpec, path: Path | None, *, random_init: bool) -> OpenClipEncoder:
    """Create ``spec.arch`` with open_clip, load the checkpoint file strictly, keep the image tower.

    The file's image tower is checked against ``spec.arch`` first: open_clip would otherwise
    resample a position embedding of another grid to fit."""
    pretrained = None if random_init or path is None else str(path)
    if pretrained is not None:
        reference = open_clip.create_model(spec.arch, pretrained=None, device="meta")
        ours = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        check_shapes(spec.name, path, file_shapes(path), ours, spec.arch, prefix="visual.")
    try:
        model = open_clip.create_model(spec.arch, pretrained=pretrained, require_pretrained=pretrained is not None)
    except RuntimeError as exc:  # load_state_dict: missing or unexpected keys
        raise ReidrayError(f"model {spec.name}: {path} does not load into open_clip {spec.arch}: "
                           f"{' '.join(str(exc).split())[:400]}") from exc
    visual = model.visual
    size = tuple(visual.image_size) if isinstance(visual.image_size, (tuple, list)) else (visual.image_size,) * 2
    if size != spec.input_size:
        raise ValueError(f"model {spec.name}: open_clip {spec.arch} expects {size}, registry says {spec.input_size}")
    return OpenClipEncoder(spec, visual, random_init=pretrained is None)
