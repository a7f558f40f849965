"""The CPU stage: read each image once, decode it, resize it for the model; fail loudly on bad files."""

from __future__ import annotations

import numpy as np

from reidray.cells import LABELS
from reidray.images import read_image
from reidray.models import get
from reidray.models.preprocess import resize


def decode_resize(batch: dict[str, np.ndarray], model: str) -> dict[str, np.ndarray]:
    """Ray Data batch function: manifest rows in, uint8 pixels at the model's input size out."""
    spec = get(model)
    pixels = np.stack([resize(read_image(str(p)), spec) for p in batch["path"]])
    return {**{k: batch[k] for k in LABELS}, "pixels": pixels}
