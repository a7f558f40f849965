"""The CPU stage: read each image once, decode it, resize it for the model; fail loudly on bad files."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError

from reidray.errors import ImageDecodeError
from reidray.models import get
from reidray.models.preprocess import resize

PASSTHROUGH = ("image_id", "pid", "camid", "split")


def read_image(path: str) -> Image.Image:
    """Open an RGB image from a local path or a URI; a file that does not decode names itself."""
    try:
        if "://" in path:
            fs, inner = pafs.FileSystem.from_uri(path)
            with fs.open_input_file(inner) as src:
                data = src.read()
        else:
            with open(path, "rb") as src:
                data = src.read()
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"image {path} does not exist; was the dataset moved after parsing?") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"image {path} does not decode (not an image format PIL reads); replace or remove the file"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise ImageDecodeError(
            f"image {path} does not decode ({type(exc).__name__}: {exc}); replace or remove the file"
        ) from exc


def decode_resize(batch: dict[str, np.ndarray], model: str) -> dict[str, np.ndarray]:
    """Ray Data batch function: manifest rows in, uint8 pixels at the model's input size out."""
    spec = get(model)
    pixels = np.stack([resize(read_image(str(p)), spec) for p in batch["path"]])
    return {**{k: batch[k] for k in PASSTHROUGH}, "pixels": pixels}
