"""The one preprocessing path every model shares: resize on the CPU, normalise on the device.

The study this project reproduces fed several models corrupted pixels because each wrapper
re-preprocessed an already normalised tensor (``ToPILImage`` on ImageNet-normalised floats).
Here an image is decoded once, resized once by :func:`resize` (PIL, the same call torchvision's
``Resize`` and the transformers image processors make on PIL images, so the pixels match the
libraries' own pipelines bit for bit), and normalised once by :func:`normalize` on the encoder's
device. Everything a model needs for this (input size, interpolation, mean, std) is in its
:class:`~reidray.models.registry.ModelSpec`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from reidray.models.registry import ModelSpec

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
RESIZE_POLICIES = ("squash", "crop", "pad")  # how the crop meets the input's aspect (see ``resize``)


def resize_key(spec: ModelSpec) -> tuple:
    """Every fact ``resize`` reads: models with equal keys get identical pixels from the CPU stage."""
    return (spec.input_size, spec.resize, spec.interpolation)


def resize(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """``image`` at ``spec.input_size`` (h, w) by the spec's aspect policy, with its interpolation.

    ``squash`` (every registered model): the whole crop stretched to the input size. ``crop``: scaled
    to cover the input, then the centre cut out (for square inputs exactly torchvision's
    ``Resize(size)`` + ``CenterCrop(size)``: the libraries' own test transform at crop fraction 1). ``pad``: the whole crop
    scaled to fit, centred on the spec's mean colour (so the padding normalises to zero).
    Returns a uint8 array [H, W, 3]: the CPU stage's output, cheap to ship between processes.
    """
    if spec.resize not in RESIZE_POLICIES:
        raise ValueError(f"model {spec.name}: unsupported resize policy {spec.resize!r}; use one of {RESIZE_POLICIES}")
    h, w = spec.input_size
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size == (w, h):
        return np.array(image, dtype=np.uint8)
    resample = _RESAMPLE[spec.interpolation]
    if spec.resize == "squash":
        return np.array(image.resize((w, h), resample), dtype=np.uint8)
    iw, ih = image.size
    if spec.resize == "crop":
        # scaled to cover the input, the other side truncated: torchvision's Resize(int) for square inputs
        size = (w, int(ih * w / iw)) if w / iw >= h / ih else (int(iw * h / ih), h)
        scaled = image.resize(size, resample) if size != image.size else image
        left, top = int(round((size[0] - w) / 2.0)), int(round((size[1] - h) / 2.0))
        return np.array(scaled.crop((left, top, left + w, top + h)), dtype=np.uint8)
    scale = min(w / iw, h / ih)
    size = (max(1, round(iw * scale)), max(1, round(ih * scale)))
    fill = tuple(int(round(m * 255)) for m in spec.mean)
    canvas = Image.new("RGB", (w, h), fill)
    canvas.paste(image.resize(size, resample), ((w - size[0]) // 2, (h - size[1]) // 2))
    return np.array(canvas, dtype=np.uint8)


def normalize(pixels: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W]: ``(x / 255 - mean) / std`` on ``pixels.device``.

    Same arithmetic as torchvision's ``ToTensor`` + ``Normalize``, so features match the
    libraries' reference transforms to float rounding.
    """
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(
            f"model {spec.name}: expected uint8 pixels [N, H, W, 3], got {pixels.dtype} {tuple(pixels.shape)}"
        )
    x = pixels.permute(0, 3, 1, 2).float().div(255.0)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub(mean).div(std).contiguous()


def prepare(images: list[Image.Image], spec: ModelSpec, device: str | torch.device = "cpu") -> torch.Tensor:
    """Resize and normalise a list of PIL images into one batch: for notebooks, tests and serving."""
    batch = np.stack([resize(im, spec) for im in images])
    return normalize(torch.from_numpy(batch).to(device), spec)
