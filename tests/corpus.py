"""Real face images from ../shared and a corpus of awkward inputs made from one, each with its expected outcome."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
import os
from pathlib import Path

import numpy as np
from PIL import Image

from batch_parse.pipeline.options import DEFAULT_MAX_PIXELS

_REPO = Path(__file__).resolve().parents[1]
# The project's read-only material: beside the checkout (../shared) in development and CI,
# inside it on the device machine, or wherever BATCH_PARSE_SHARED says (a clone elsewhere).
_SHARED_CANDIDATES = tuple(
    Path(p) for p in (os.environ.get("BATCH_PARSE_SHARED", ""), _REPO.parent / "shared", _REPO / "shared", "/work/shared") if str(p)
)


def shared_dir() -> Path:
    for candidate in _SHARED_CANDIDATES:
        if (candidate / "data" / "utkface").is_dir():
            return candidate
    raise FileNotFoundError(f"shared/ not found in any of: {', '.join(map(str, _SHARED_CANDIDATES))} (set BATCH_PARSE_SHARED)")

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
MARK = 24  # side of the marked top-left square in the orientation / transparency items


@dataclass(frozen=True)
class Expected:
    code: str  # "ok", or the DecodeError code
    size: tuple[int, int] | None = None  # (width, height) after EXIF orientation, for "ok" items


def utkface_dir() -> Path:
    return shared_dir() / "data" / "utkface"


def face_jpegs(n: int) -> list[bytes]:
    """The bytes of the first `n` UTKFace crops (200x200 JPEG) in sorted file-name order."""
    paths = sorted(p for p in utkface_dir().iterdir() if p.suffix.lower() == ".jpg")[:n]
    if len(paths) < n:
        raise ValueError(f"asked for {n} faces, {utkface_dir()} has {len(paths)}")
    return [p.read_bytes() for p in paths]


# The outcome of decode_image(data, DEFAULT_MAX_PIXELS) for each item of bad_inputs().
EXPECTED: dict[str, Expected] = {
    "zero_bytes.jpg": Expected("empty"),
    "truncated.jpg": Expected("truncated"),
    "text_file.jpg": Expected("not_an_image"),
    "one_pixel.png": Expected("too_small"),
    "corrupt_data.png": Expected("decode_failed"),
    # Header-only PNGs: decoding them would fail as truncated, so too_large proves the size was
    # checked first. 30000^2 is above Pillow's own bomb limit, 9000^2 only above ours.
    "bomb_30000x30000.png": Expected("too_large"),
    "bomb_9000x9000.png": Expected("too_large"),
    "grey16.png": Expected("ok", (200, 200)),
    "cmyk.jpg": Expected("ok", (200, 200)),
    "rgba.png": Expected("ok", (200, 200)),
    "grey_alpha.png": Expected("ok", (200, 200)),
    "palette_transparent.png": Expected("ok", (200, 200)),
    "greyscale.jpg": Expected("ok", (200, 200)),
    "animated.gif": Expected("ok", (48, 40)),
    "animated.webp": Expected("ok", (48, 40)),
    "exif_rotated_6.jpg": Expected("ok", (150, 200)),
}
assert 9000 * 9000 > DEFAULT_MAX_PIXELS, "bomb_9000x9000.png must stay above the default limit"


@lru_cache(maxsize=1)
def bad_inputs() -> dict[str, bytes]:
    """File name -> bytes for every case in EXPECTED, generated from the first UTKFace crop.

    What the content checks in test_decode rely on: in rgba.png, grey_alpha.png and
    palette_transparent.png the top-left MARKxMARK square is fully transparent over black; in
    exif_rotated_6.jpg the stored top-left square is red (it must end up top-right); the GIF and
    WebP have a red first frame and a blue second one; grey16.png holds the face's greyscale
    values times 257.
    """
    face = Image.open(io.BytesIO(face_jpegs(1)[0])).convert("RGB")
    grey = face.convert("L")
    items = {
        "zero_bytes.jpg": b"",
        "truncated.jpg": _save(face, "JPEG", quality=90)[: 3 * len(_save(face, "JPEG", quality=90)) // 5],
        "text_file.jpg": b"name,age\nalice,31\nbob,42\n" * 20,
        "one_pixel.png": _save(Image.new("RGB", (1, 1), RED), "PNG"),
        "corrupt_data.png": _corrupt_png(face),
        "bomb_30000x30000.png": header_only_png(30000, 30000),
        "bomb_9000x9000.png": header_only_png(9000, 9000),
        "grey16.png": _save(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG"),
        "cmyk.jpg": _save(face.convert("CMYK"), "JPEG", quality=95),
        "rgba.png": _save(_with_transparent_corner(face.convert("RGBA")), "PNG"),
        "grey_alpha.png": _save(_with_transparent_corner(grey.convert("LA")), "PNG"),
        "palette_transparent.png": _palette_with_transparency(face),
        "greyscale.jpg": _save(grey, "JPEG", quality=90),
        "animated.gif": _animated("GIF"),
        "animated.webp": _animated("WEBP"),
        "exif_rotated_6.jpg": _exif_rotated(face),
    }
    assert items.keys() == EXPECTED.keys()
    return items


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit RGB) followed by a few bytes of pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _corrupt_png(face: Image.Image) -> bytes:
    data = bytearray(_save(face, "PNG"))
    data[data.index(b"IDAT") + 20] ^= 0xFF  # a valid header over a broken zlib stream
    return bytes(data)


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _with_transparent_corner(image: Image.Image) -> Image.Image:
    pixels = np.array(image)
    pixels[:MARK, :MARK] = 0  # black and alpha 0: composited on black it would stay black
    return Image.fromarray(pixels, image.mode)


def _palette_with_transparency(face: Image.Image) -> bytes:
    indexed = np.array(face.quantize(colors=255))
    palette = face.quantize(colors=255).getpalette()[: 255 * 3] + [0, 0, 0]
    indexed[:MARK, :MARK] = 255  # index 255 is black and marked transparent
    image = Image.fromarray(indexed.astype(np.uint8), "P")
    image.putpalette(palette)
    return _save(image, "PNG", transparency=255)


def _animated(fmt: str) -> bytes:
    first, second = Image.new("RGB", (48, 40), RED), Image.new("RGB", (48, 40), BLUE)
    params = {"lossless": True} if fmt == "WEBP" else {}
    return _save(first, fmt, save_all=True, append_images=[second], duration=100, loop=0, **params)


def _exif_rotated(face: Image.Image) -> bytes:
    stored = np.array(face.crop((0, 0, 200, 150)))  # landscape as stored, portrait once upright
    stored[:MARK, :MARK] = RED
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return _save(Image.fromarray(stored), "JPEG", quality=95, exif=exif)


def group_jpegs(n: int, faces_per_image: int = 3, offset: int = 100) -> list[bytes]:
    """`n` group photos, each `faces_per_image` real UTKFace crops side by side on a grey canvas.

    Faces are taken in order from the UTKFace crops after the first `offset` (so they differ from
    face_jpegs' first ones), each at 200 px with 20 px gaps: a multi-face photo whose faces are
    all large and frontal.
    """
    crops = face_jpegs(offset + n * faces_per_image)[offset:]
    photos = []
    for i in range(n):
        canvas = Image.new("RGB", (20 + 220 * faces_per_image, 240), (128, 128, 128))
        for k in range(faces_per_image):
            face = Image.open(io.BytesIO(crops[i * faces_per_image + k])).convert("RGB")
            canvas.paste(face, (20 + 220 * k, 20))
        buffer = io.BytesIO()
        canvas.save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos
