"""decode_image on real faces and on the awkward-input corpus: right pixels or the right error code."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from batch_parse.pipeline.decode import MIN_SIDE, DecodeError, decode_image
from batch_parse.pipeline.options import DEFAULT_MAX_PIXELS
from corpus import BLUE, EXPECTED, MARK, RED, WHITE, bad_inputs, header_only_png


def _decode(name: str) -> np.ndarray:
    return decode_image(bad_inputs()[name], DEFAULT_MAX_PIXELS)


def _face_rgb(face_jpegs) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(face_jpegs(1)[0])).convert("RGB"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_item_has_expected_outcome(name):
    expected = EXPECTED[name]
    if expected.code == "ok":
        pixels = _decode(name)
        width, height = expected.size
        assert pixels.shape == (height, width, 3)
        assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    else:
        with pytest.raises(DecodeError) as info:
            _decode(name)
        assert info.value.code == expected.code
        assert info.value.message and "\n" not in info.value.message and "Traceback" not in info.value.message


def test_real_faces_match_pillow(face_jpegs):
    for data in face_jpegs(5):
        reference = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(decode_image(data, DEFAULT_MAX_PIXELS), reference)


def test_bombs_are_refused_before_decoding():
    # 9000x9000 RGB would be a 243 MB buffer; a header read takes microseconds.
    started = time.perf_counter()
    for _ in range(20):
        with pytest.raises(DecodeError) as info:
            decode_image(header_only_png(9000, 9000), DEFAULT_MAX_PIXELS)
    assert info.value.code == "too_large"
    assert info.value.message == "image is 9000x9000 = 81,000,000 pixels, above max_pixels=50,000,000"
    assert time.perf_counter() - started < 0.5


def test_max_pixels_and_min_side_boundaries(face_jpegs):
    face = face_jpegs(1)[0]
    assert decode_image(face, max_pixels=200 * 200).shape == (200, 200, 3)
    with pytest.raises(DecodeError) as info:
        decode_image(face, max_pixels=200 * 200 - 1)
    assert info.value.code == "too_large"

    def png(width: int, height: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (width, height), RED).save(out, "PNG")
        return out.getvalue()

    assert decode_image(png(MIN_SIDE, MIN_SIDE), DEFAULT_MAX_PIXELS).shape == (MIN_SIDE, MIN_SIDE, 3)
    with pytest.raises(DecodeError) as info:
        decode_image(png(300, MIN_SIDE - 1), DEFAULT_MAX_PIXELS)
    assert info.value.code == "too_small"


def test_exif_orientation_is_applied():
    pixels = _decode("exif_rotated_6.jpg")
    # Stored landscape with a red top-left corner; upright it is portrait with the red corner top-right.
    assert np.abs(pixels[:MARK - 4, -(MARK - 4) :].mean(axis=(0, 1)) - RED).max() < 12
    assert np.abs(pixels[:MARK - 4, : MARK - 4].mean(axis=(0, 1)) - RED).max() > 60


@pytest.mark.parametrize("name", ["rgba.png", "grey_alpha.png", "palette_transparent.png"])
def test_transparency_is_composited_on_white(name):
    pixels = _decode(name)
    assert (pixels[:MARK, :MARK] == WHITE).all()
    assert pixels[MARK:, MARK:].mean() < 250  # the face is still there


def test_grey16_is_scaled_not_clipped(face_jpegs):
    grey = np.array(Image.fromarray(_face_rgb(face_jpegs)).convert("L"))
    pixels = _decode("grey16.png")
    assert np.array_equal(pixels[:, :, 0], grey)
    assert np.array_equal(pixels[:, :, 0], pixels[:, :, 2])


def test_cmyk_and_palette_colours_stay_close(face_jpegs):
    face = _face_rgb(face_jpegs).astype(np.int16)
    assert np.abs(_decode("cmyk.jpg").astype(np.int16) - face).mean() < 6
    palette = _decode("palette_transparent.png").astype(np.int16)
    assert np.abs(palette[MARK:, MARK:] - face[MARK:, MARK:]).mean() < 6


@pytest.mark.parametrize("name", ["animated.gif", "animated.webp"])
def test_animation_gives_its_first_frame(name):
    with Image.open(io.BytesIO(bad_inputs()[name])) as image:
        assert image.n_frames == 2
        image.seek(1)
        assert np.abs(np.array(image.convert("RGB")).mean(axis=(0, 1)) - BLUE).max() < 2
    assert np.abs(_decode(name).mean(axis=(0, 1)) - RED).max() < 2
