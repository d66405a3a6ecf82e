"""The face-first Python API: detector + parser.parse_faces on real photos, one result per face in photo pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from batch_parse import load_detector, load_parser
from batch_parse.demo import IMAGES_DIR
from batch_parse.labels import NUM_CLASSES, PART_NAMES

# Face boxes of the composite group photo, as placed by batch_parse/demo/make_images.py.
GROUP_FACES = [(40, 120, 180, 270), (270, 150, 485, 350), (568, 92, 712, 229), (790, 90, 874, 180)]


def _photo(name: str) -> np.ndarray:
    with Image.open(IMAGES_DIR / name) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.fixture(scope="module")
def models(one_torch_thread):
    return load_detector("mtcnn", device="cpu"), load_parser("stn-icnn/default", device="cpu")


def _inside(point, box, slack: float = 0.0) -> bool:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return x0 - slack * w <= point[0] <= x1 + slack * w and y0 - slack * h <= point[1] <= y1 + slack * h


def test_group_photo_gives_one_result_per_face_in_photo_pixels(models):
    detector, parser = models
    photo = _photo("group_canvas.jpg")
    (found,) = detector.detect([photo])
    results = parser.parse_faces([photo], [found])
    assert [r.face_index for r in results] == list(range(len(found.scores))) and {r.image_index for r in results} == {0}
    # Each placed face is found once: its landmarks' centre lies in exactly one result's known box.
    centres = [r.landmarks.mean(0) for r in results]
    for box in GROUP_FACES:
        assert sum(_inside(c, box) for c in centres) == 1, box
    height, width = photo.shape[:2]
    for r in results:
        x0, y0 = r.label_map_offset
        h, w = r.label_map.shape
        assert 0 <= x0 and 0 <= y0 and x0 + w <= width and y0 + h <= height
        assert r.class_pixels.sum() == h * w
        np.testing.assert_array_equal(np.bincount(r.label_map.ravel(), minlength=NUM_CLASSES), r.class_pixels)
        # Labelled pixels of this face lie around its own detector box, not on a neighbour.
        ys, xs = np.nonzero(r.label_map)
        assert xs.size > 0
        centre = (xs.mean() + x0, ys.mean() + y0)
        assert _inside(centre, r.face_box, slack=0.1)
        full = r.photo_label_map(width, height)
        assert full.shape == (height, width) and (full > 0).sum() == xs.size
        # Part crops are cut upright from the aligned frame; windows are its boxes in photo pixels.
        assert r.aligned.shape == (r.alignment.height, r.alignment.width, 3)
        assert r.windows.shape == (len(PART_NAMES), 4, 2)
        for p in range(len(PART_NAMES)):
            crop = r.part_crop(p)
            assert crop.ndim == 3 and crop.shape[2] == 3
        corners = r.alignment.to_frame(r.windows.astype(np.float64))
        np.testing.assert_allclose(corners[:, 0], r.boxes[:, :2], atol=1e-3)
        np.testing.assert_allclose(corners[:, 2], r.boxes[:, 2:], atol=1e-3)


def test_aligned_frame_is_upright_for_a_rotated_face(models):
    detector, parser = models
    photo = _photo("hopper_rotated10.jpg")
    (found,) = detector.detect([photo])
    (r,) = parser.parse_faces([photo], [found])
    eyes = r.alignment.to_frame(r.landmarks[:2].astype(np.float64))
    # In the photo the eyes are tilted by the rotation; in the frame they are level.
    tilt_photo = np.degrees(np.arctan2(*(r.landmarks[1] - r.landmarks[0])[::-1]))
    tilt_frame = np.degrees(np.arctan2(*(eyes[1] - eyes[0])[::-1]))
    assert abs(tilt_photo) > 5 and abs(tilt_frame) < 1


def test_frame_never_exceeds_the_face_resolution(models):
    detector, parser = models
    photo = _photo("astronaut_small.jpg")  # a 150 px thumbnail: a small face
    (found,) = detector.detect([photo])
    (r,) = parser.parse_faces([photo], [found])
    assert r.alignment.scale <= 1.0 + 1e-9 or r.alignment.width == 32


def test_whole_image_mode_is_the_plain_parse(models):
    _, parser = models
    photos = [_photo("hopper_face_tight.jpg"), _photo("astronaut_face_loose.jpg")]
    plain = parser.parse(photos)
    whole = parser.parse_faces(photos, None)
    assert [r.image_index for r in whole] == [0, 1]
    for a, b in zip(plain, whole):
        np.testing.assert_array_equal(a.label_map, b.label_map)
        np.testing.assert_allclose(a.boxes, b.boxes)
        assert b.label_map_offset == (0, 0) and b.score is None and b.landmarks is None


def test_mixed_batch_equals_one_by_one(models):
    """fp32 labels do not depend on what else is in the batch; the default precision (bf16 stage 2
    where the CPU has native bf16) may move a few pixels with the batch's shape, never more."""
    detector, parser = models
    exact = load_parser("stn-icnn/default", device="cpu", precision="fp32")
    photos = [_photo("group_canvas.jpg"), _photo("hopper.jpg")]
    for p, same in ((exact, np.testing.assert_array_equal), (parser, _nearly_equal)):
        together = p.parse_faces(photos, detector.detect(photos))
        alone = [r for photo in photos for r in p.parse_faces([photo], detector.detect([photo]))]
        assert len(together) == len(alone)
        for a, b in zip(together, alone):
            assert a.face_index == b.face_index and a.label_map_offset == b.label_map_offset
            same(a.label_map, b.label_map)


def _nearly_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and (a != b).mean() <= 0.001, (a != b).mean()


def test_no_face_gives_no_result(models):
    detector, parser = models
    sky = np.zeros((120, 160, 3), np.uint8)
    sky[:] = (40, 110, 200)
    (found,) = detector.detect([sky])
    assert len(found.scores) == 0
    assert parser.parse_faces([sky], [found]) == []
