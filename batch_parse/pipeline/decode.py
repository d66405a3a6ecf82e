"""Bytes -> upright HxWx3 uint8 RGB array, or a DecodeError with a short code and a one-line message."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Below this the face parser's part windows are smaller than a pixel; such files are icons or
# tracking pixels, not faces.
MIN_SIDE = 16
_WHITE = (255, 255, 255, 255)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks Pillow decompresses under its MAX_TEXT_CHUNK / MAX_TEXT_MEMORY limits: text, and the
# colour profile (iCCP). We use neither (pixels are never colour-managed), so a file over the limits
# is decoded again without them.
_PNG_LIMITED_CHUNKS = (b"tEXt", b"zTXt", b"iTXt", b"iCCP")


class DecodeError(Exception):
    """An image that cannot be labelled; `code` goes to the output row's error_code column."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode the first frame of `data` at full resolution, EXIF orientation applied, as RGB.

    The size declared in the header is checked before any pixel is decoded, so a decompression
    bomb costs a header read. No `Image.draft`: it only helps when downscaling, and the label map
    must match the original resolution.

    Every failure is a DecodeError (final: the same bytes fail the same way): whatever a single
    file makes Pillow or numpy raise becomes `decode_failed`, never an exception out of here.
    """
    if not data:
        raise DecodeError("empty", "the object is empty (0 bytes)")
    try:
        return _decode_rgb(data, max_pixels)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - one file must never stop a run: it is an error row
        raise DecodeError("decode_failed", f"cannot decode image: {type(exc).__name__}: {_first_line(exc)}") from None


def _decode_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        image = _decode(data, max_pixels)
    except _TextTooLarge:
        # Pillow refuses PNG text chunks and ICC profiles above 1 MB decompressed (64 MB of text in
        # all) as a memory guard, even after the pixels decoded fine (text after IDAT is read at the
        # end of load()). We need neither: decode the same file without those chunks.
        try:
            image = _decode(_without_limited_chunks(data), max_pixels)
        except _TextTooLarge:
            raise DecodeError("decode_failed", "cannot decode image: a PNG chunk exceeds Pillow's size limits") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a corrupt EXIF block should not cost a readable image its label
        pass
    return _to_rgb(image)


class _TextTooLarge(Exception):
    """Pillow's PNG text-chunk limit (MAX_TEXT_CHUNK / MAX_TEXT_MEMORY) was hit."""


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    # Our max_pixels check below is the real limit; Pillow's own warning would only be noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = _open(data)
        _check_size(image.size, max_pixels)
        _load(image)
    return image


def _without_limited_chunks(data: bytes) -> bytes:
    """The PNG without its tEXt/zTXt/iTXt/iCCP chunks; anything malformed is kept as it is for the decoder to judge."""
    out, pos = [data[:8]], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            break
        if kind not in _PNG_LIMITED_CHUNKS:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    out.append(data[pos:])
    return b"".join(out)


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not_an_image", f"not an image file Pillow can read ({len(data)} bytes)") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError("too_large", f"declared size is above Pillow's safety limit: {_first_line(exc)}") from None
    except ValueError as exc:
        if "MAX_TEXT_" in str(exc) and data.startswith(_PNG_SIGNATURE):
            raise _TextTooLarge() from None
        raise _classify(exc) from None
    except Exception as exc:
        raise _classify(exc) from None


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        message = f"image is {width}x{height} = {width * height:,} pixels, above max_pixels={max_pixels:,}"
        raise DecodeError("too_large", message)
    if min(width, height) < MIN_SIDE:
        raise DecodeError("too_small", f"image is {width}x{height}, smaller than {MIN_SIDE} px on a side")


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise DecodeError("too_large", f"above Pillow's safety limit: {_first_line(exc)}") from None
    except ValueError as exc:
        if "MAX_TEXT_" in str(exc) and image.format == "PNG":
            raise _TextTooLarge() from None
        raise _classify(exc) from None
    except Exception as exc:
        raise _classify(exc) from None


def _classify(exc: Exception) -> DecodeError:
    text = _first_line(exc)
    if isinstance(exc, EOFError) or "truncat" in text.lower():
        return DecodeError("truncated", f"image data is truncated: {text}")
    return DecodeError("decode_failed", f"cannot decode image: {type(exc).__name__}: {text}")


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale: scale the full 0..65535 range to 0..255 (convert("L") would clip at 255).
        values = np.asarray(image).astype(np.int64)
        grey = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "F":
        grey = np.clip(np.asarray(image), 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # Transparent pixels are usually black underneath; on white they look like the
        # background a viewer shows, which is what the model was trained on.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__
