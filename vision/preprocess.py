"""Any picture -> the vision net's input: RGB, upright, bicubic-resized, CLIP-normalised.

This is where an image enters the model. Everything a user can upload goes through
`load_image`, which turns every failure into an `ImageError` with a readable reason.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
MAX_PIXELS = 40_000_000  # larger uploads are refused before they are decoded
MAX_BYTES = 50 * 1024 * 1024

ImageSource = str | Path | bytes | Image.Image


class ImageError(ValueError):
    """The upload is not an image this app can use; the message says why."""


def load_image(source: ImageSource) -> Image.Image:
    """Open and check an image, and return it as an upright RGB picture."""
    if isinstance(source, Image.Image):
        image = source
    else:
        data = source if isinstance(source, bytes) else _read(Path(source))
        if len(data) > MAX_BYTES:
            raise ImageError(f"The file is {len(data) / 2**20:.0f} MB; images up to {MAX_BYTES // 2**20} MB are accepted.")
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError("This file is not an image Pillow can read (PNG, JPEG, WebP, GIF, BMP, TIFF...).") from None
        except Image.DecompressionBombError:  # Pillow's own limit, far above ours: refused for the same reason
            raise ImageError(f"The image has far more pixels than the {MAX_PIXELS // 1_000_000} million "
                             "accepted.") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"The image is {width}x{height} pixels; at most {MAX_PIXELS // 1_000_000} million are accepted.")
    if width == 0 or height == 0:
        raise ImageError("The image is empty.")
    try:
        image = ImageOps.exif_transpose(image)  # photos come out the way they were taken
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt pixel data
        raise ImageError(f"The image file is damaged and cannot be decoded ({exc}).") from None


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise ImageError(f"No such image file: {path}")
    if path.stat().st_size > MAX_BYTES:
        raise ImageError(f"{path.name} is {path.stat().st_size / 2**20:.0f} MB; images up to "
                         f"{MAX_BYTES // 2**20} MB are accepted.")
    return path.read_bytes()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any mode to RGB; transparent parts become white, as on a web page."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits first
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8))
    return image.convert("RGB")


def model_sized(image: Image.Image, size: int) -> Image.Image:
    """The picture as the vision net sees it: bicubic, `size` x `size`. Keeping this instead of
    the upload costs 150 KB at 224 px, and to_pixels() gives the same pixels from either."""
    return image.resize((size, size), Image.Resampling.BICUBIC)


def to_pixels(image: Image.Image, size: int) -> np.ndarray:
    """RGB picture -> float32 [1,3,size,size]: bicubic resize, then CLIP mean/std."""
    array = np.asarray(model_sized(image, size), dtype=np.float32) / 255.0
    return ((array - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)[None].copy()
