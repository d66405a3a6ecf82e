"""The bytes in the output's image columns, both ways: label maps (8-bit palette PNG) and part crops.

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


def _label_palette() -> list[int]:
    from batch_parse.labels import CLASS_COLORS

    palette = [v for color in CLASS_COLORS for v in color]
    return palette + [0] * (768 - len(palette))


# Class colours (labels.py) as a PNG palette: every value any model writes gets its colour.
LABEL_PALETTE = _label_palette()


def encode_label_map(label_map: np.ndarray) -> bytes:
    """A label map ((h, w) uint8 class indices) as an 8-bit palette PNG: the pixel values are the
    class indices, as before, and the palette holds the class colours, so an image viewer shows the
    parts in colour instead of a near-black grey 0..9 picture. Level 1 as encode_png."""
    image = Image.fromarray(np.ascontiguousarray(label_map, dtype=np.uint8), mode="P")
    image.putpalette(LABEL_PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_label_map(data: bytes) -> np.ndarray:
    """The (h, w) uint8 class indices of a `label_map` cell; ValueError if the bytes are no image.

    Palette PNGs (0.6 on) and grey ones (before) both hold the indices as pixel values: read as they are."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image if image.mode in ("L", "P") else image.convert("L"), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad bytes; one meaning here
        raise ValueError(f"unreadable label map: {exc}") from exc


def decode_crop(data: bytes) -> np.ndarray:
    """The (h, w, 3) uint8 RGB pixels of a `<part>_crop` cell (JPEG or PNG); ValueError if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"unreadable crop: {exc}") from exc


def add_face(photo_map: np.ndarray, label_map: np.ndarray, x: int, y: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Add one face's label map, placed at (x, y), to its photo's (height, width) map, in place.

    The union-of-faces rule every whole-photo view uses (exports, `eval`, open_output): faces go
    in face_index order (largest first) and a face fills only pixels the earlier ones left as
    background. Returns the photo region the face covers and, within it, the pixels it filled.
    """
    height, width = photo_map.shape
    x0, y0 = max(x, 0), max(y, 0)
    region = label_map[y0 - y : height - y, x0 - x : width - x]
    h, w = region.shape
    target = photo_map[y0 : y0 + h, x0 : x0 + w]
    free = (target == 0) & (region != 0)
    target[free] = region[free]
    return (slice(y0, y0 + h), slice(x0, x0 + w)), free


def place_label_map(label_map: np.ndarray, x: int, y: int, height: int, width: int) -> np.ndarray:
    """One face's label map placed in its photo's pixels: (height, width), background elsewhere."""
    photo = np.zeros((height, width), np.uint8)
    add_face(photo, label_map, x, y)
    return photo
