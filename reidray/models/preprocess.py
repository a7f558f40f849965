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


def resize_key(spec: ModelSpec) -> tuple:
    """Every fact ``resize`` reads: models with equal keys get identical pixels from the CPU stage."""
    return (spec.input_size, spec.resize, spec.interpolation)


def resize(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """Squash ``image`` to ``spec.input_size`` (h, w) with the spec's interpolation.

    Returns a uint8 array [H, W, 3]: the CPU stage's output, cheap to ship between processes.
    """
    if spec.resize != "squash":
        raise ValueError(f"model {spec.name}: unsupported resize policy {spec.resize!r}")
    h, w = spec.input_size
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (w, h):
        image = image.resize((w, h), _RESAMPLE[spec.interpolation])
    return np.array(image, dtype=np.uint8)


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
