"""The bytes in the output's image columns, both ways: label maps (8-bit grey PNG) and part crops.

Written once: the job encodes with it, and every reader (open_output, render, exports) decodes with it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """A label map ((h, w) uint8 class indices: a grey PNG) or an RGB crop ((h, w, 3)) as PNG bytes.
    Level 1: label maps are mostly one value and compress well anyway; encoding speed matters more."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_label_map(data: bytes) -> np.ndarray:
    """The (h, w) uint8 class indices of a `label_map` cell; ValueError if the bytes are no image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image if image.mode == "L" else image.convert("L"), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad bytes; one meaning here
        raise ValueError(f"unreadable label map: {exc}") from exc


def decode_crop(data: bytes) -> np.ndarray:
    """The (h, w, 3) uint8 RGB pixels of a `<part>_crop` cell (JPEG or PNG); ValueError if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"unreadable crop: {exc}") from exc


def place_label_map(label_map: np.ndarray, x: int, y: int, height: int, width: int, into: np.ndarray | None = None) -> np.ndarray:
    """A face's label map placed in its photo's pixels: (height, width), zero (background) elsewhere.

    `into`: add the face to an existing map of the photo; it fills only what earlier (larger) faces
    left as background, the union-of-faces rule every whole-photo view uses.
    """
    full = np.zeros((height, width), np.uint8) if into is None else into
    h, w = label_map.shape
    region = full[y : y + h, x : x + w]
    patch = label_map[: region.shape[0], : region.shape[1]]
    np.copyto(region, patch, where=(region == 0) & (patch != 0))
    return full
