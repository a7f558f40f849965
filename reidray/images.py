"""Turning bytes into an RGB image: the one decoder the embed stage and serve share.

The pixel count is read from the header before anything is decoded, so a small file that would
expand to gigabytes is refused without allocating them. Any decoder failure is the data's fault,
never the caller's: it becomes an ``ImageDecodeError`` the caller words for its user (a dataset
file to replace, a request body to resend).
"""

from __future__ import annotations

import io

import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError

from reidray.errors import ImageDecodeError, ImageTooLargeError

# ~40 MP: far beyond any person crop, far below what would exhaust a worker's memory (serve's
# uploads have their own, lower limit: reidray.serve.settings.MAX_IMAGE_PIXELS).
MAX_PIXELS = 40_000_000


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``data`` as an RGB image. Raises ImageTooLargeError past ``max_pixels`` (from the header)
    and ImageDecodeError with the reason when it is not an image that decodes."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels:,} pixels")
        image.load()
        return image.convert("RGB")
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError:  # PIL's own ceiling, met at open, before our header check
        raise ImageTooLargeError(f"image exceeds the limit of {max_pixels:,} pixels (PIL refuses it as a "
                                 "decompression bomb)") from None
    except MemoryError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image format PIL reads") from None
    except Exception as exc:  # truncated or corrupt data: PIL raises many kinds
        raise ImageDecodeError(f"{type(exc).__name__}: {exc}") from None


def read_image(path: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an RGB image from a local path or a URI; a file that does not decode names itself."""
    try:
        if "://" in path:
            fs, inner = pafs.FileSystem.from_uri(path)
            with fs.open_input_file(inner) as src:
                data = src.read()
        else:
            with open(path, "rb") as src:
                data = src.read()
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"image {path} does not exist; was the dataset moved after parsing?") from exc
    except OSError as exc:
        raise ImageDecodeError(f"image {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    try:
        return decode(data, max_pixels)
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(f"image {path}: {exc}; replace or remove the file") from None
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"image {path} does not decode ({exc}); replace or remove the file") from None
