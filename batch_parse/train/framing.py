"""Loosely framed test photos made from tight, labelled face crops, to score wide shots.

Training and test sets of aligned crops (UTKFace, Helen) have faces filling the frame; real
corpora have portraits, half-body shots and faces in rooms. `reframe` puts each labelled
image, at its own resolution, into a larger 4:3 canvas so that it spans `fraction` of the
canvas width, at a random place, and fills the rest with clutter: 25 px tiles of *other*
images from the set, each rotated by a random multiple of 90 degrees, so the background has
skin, hair and clothing colours and textures but no second face in one piece. Labels outside
the original crop are background. Deterministic: the layout of an image depends only on its
name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np

TILE = 25
POOL = 8  # clutter comes from the previous images of the stream


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))


def clutter(pool: list[np.ndarray], height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(height, width, 3) uint8 of TILE x TILE squares cut from random places of pool images."""
    rows, cols = -(-height // TILE), -(-width // TILE)
    canvas = np.empty((rows * TILE, cols * TILE, 3), dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            source = pool[rng.integers(len(pool))]
            y = rng.integers(source.shape[0] - TILE + 1)
            x = rng.integers(source.shape[1] - TILE + 1)
            canvas[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = np.rot90(source[y : y + TILE, x : x + TILE], rng.integers(4))
    return canvas[:height, :width]


def reframe(samples: Iterable[tuple[str, np.ndarray, np.ndarray]], fraction: float) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, label) -> the same, placed to span `fraction` of a cluttered 4:3 canvas."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    pool: list[np.ndarray] = []
    for name, image, label in samples:
        height, width = image.shape[:2]
        if fraction == 1 or min(height, width) < TILE:
            yield name, image, label
            continue
        canvas_w = max(width, round(width / fraction))
        canvas_h = max(height, round(canvas_w * 3 / 4))
        rng = _rng(name)
        canvas = clutter(pool or [image], canvas_h, canvas_w, rng)
        x, y = rng.integers(canvas_w - width + 1), rng.integers(canvas_h - height + 1)
        canvas[y : y + height, x : x + width] = image
        framed_label = np.zeros((canvas_h, canvas_w), dtype=label.dtype)
        framed_label[y : y + height, x : x + width] = label
        pool = (pool + [image])[-POOL:]
        yield name, canvas, framed_label
