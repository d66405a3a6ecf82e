"""The search for faces too small for the first pass, and the shipped weights on loosely framed photos.

Unit tests build stage-1 probability maps by hand; the end-to-end tests parse the bundled demo
photos (real faces, from tight crops to wide shots) with the shipped weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from batch_parse.labels import CLASS_NAMES, NUM_CLASSES
from batch_parse.model import face_search, geometry, load_parser
from batch_parse.model.config import AUTHORS_CONFIG
from batch_parse.model.face_search import PARTS_PER_NOSE, candidate_crops, connected_components, face_candidates

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEMO = Path(__file__).resolve().parents[1] / "batch_parse" / "demo" / "images"
C = {name: i for i, name in enumerate(CLASS_NAMES)}


def test_connected_components_counts_blobs_with_diagonal_neighbours():
    mask = torch.zeros(8, 10, dtype=torch.bool)
    mask[1:3, 1:3] = True  # blob 1 (2x2)
    mask[3, 3] = True  # touches blob 1 at a corner: the same component (8-connectivity)
    mask[5:7, 6:9] = True  # blob 2 (2x3)
    mask[0, 9] = True  # a single pixel
    labels = connected_components(mask)
    assert (labels > 0).eq(mask).all()
    ids = sorted(labels[mask].unique().tolist())
    assert len(ids) == 3
    assert labels[1, 1] == labels[3, 3] != labels[5, 6]
    assert sorted((labels == i).sum().item() for i in ids) == [1, 5, 6]


def _blank(size: int) -> torch.Tensor:
    probs = torch.zeros(NUM_CLASSES, size, size)
    probs[0] = 1
    return probs


def _paint(probs: torch.Tensor, cls: int, x0: int, y0: int, x1: int, y1: int, p: float = 0.9) -> None:
    probs[:, y0:y1, x0:x1] = (1 - p) / (NUM_CLASSES - 1)
    probs[cls, y0:y1, x0:x1] = p


def _face(probs: torch.Tensor, x: int, y: int) -> None:
    """A nose of 8x8 at (x..x+8, y..y+8) with brows, eyes and lips where a face has them."""
    _paint(probs, C["nose"], x, y, x + 8, y + 8)
    _paint(probs, C["eye_1"], x - 6, y - 4, x - 2, y - 2)
    _paint(probs, C["eye_2"], x + 10, y - 4, x + 14, y - 2)
    _paint(probs, C["brow_1"], x - 7, y - 8, x - 1, y - 7)
    _paint(probs, C["upper_lip"], x - 1, y + 10, x + 9, y + 11)
    _paint(probs, C["lower_lip"], x - 1, y + 12, x + 9, y + 13)


def test_candidates_rank_a_nose_with_a_face_around_it_above_a_bigger_lone_one():
    probs = _blank(96)
    _face(probs, 60, 30)
    _paint(probs, C["nose"], 10, 60, 22, 72)  # 12x12: bigger, but nothing around it
    _paint(probs, C["nose"], 80, 80, 82, 82)  # 2x2: too small to be a nose
    found = face_candidates(probs)
    assert len(found) == 2
    (cx, cy, side, score), (lone_cx, lone_cy, _, lone_score) = found
    assert (cx, cy) == (63.5, 33.5) and (lone_cx, lone_cy) == (15.5, 65.5)
    assert side == pytest.approx(PARTS_PER_NOSE * 8)
    assert score == pytest.approx(0.9) and lone_score < 0.1


def test_candidate_crops_map_the_view_back_to_the_photo():
    # A 300x150 photo in a 96 px search view: 96x48 at offset (0, 24), 3.125 photo px per view px.
    probs = _blank(96)
    _face(probs, 60, 40)
    (box,) = candidate_crops(probs, 300, 150)
    cx, cy = (63.5 + 0.5) * 3.125, (43.5 + 0.5 - 24) * 3.125
    half = face_search.FACE_CROP_MARGIN * PARTS_PER_NOSE * 8 * 3.125 / 2
    assert box == (max(0, int(cx - half)), max(0, int(cy - half)), min(300, int(np.ceil(cx + half))), min(150, int(np.ceil(cy + half))))


def test_no_nose_no_candidate():
    assert face_candidates(_blank(64)) == []
    assert candidate_crops(_blank(64), 640, 480) == []


def test_search_view_keeps_the_aspect_and_pads():
    # The parser's search view: the "square" stage-1 input at a larger size, whatever the weights' geometry.
    image = torch.full((3, 50, 100), 255, dtype=torch.uint8)
    cfg = dataclasses.replace(AUTHORS_CONFIG, geometry="square", stage1_resize="antialias", stage1_size=64)
    view = geometry.stage1_input(image, cfg)
    assert view.shape == (3, 64, 64)
    assert view[:, 16:48].min() > 0.999 and view[:, :16].max() == 0 and view[:, 48:].max() == 0


# Head boxes (x0, y0, x1, y1) drawn by eye on the bundled demo photos: forehead to chin, ear to ear.
HEADS = {
    "astronaut_exif_rotated.jpg": (170, 60, 290, 180),
    "astronaut_face_loose.jpg": (110, 90, 280, 250),
    "astronaut_small.jpg": (45, 15, 85, 55),
    "astronaut_warm.jpg": (170, 60, 290, 180),
    "astronaut_wide.jpg": (330, 195, 420, 285),
    "hopper.jpg": (150, 120, 360, 320),
    "hopper_face_tight.jpg": (0, 20, 230, 200),
    "hopper_grey.jpg": (150, 120, 360, 320),
    "hopper_mirrored.jpg": (110, 90, 280, 240),
    "hopper_rotated10.jpg": (150, 120, 360, 320),
}


@pytest.fixture(scope="module")
def default_parser():
    return load_parser("stn-icnn/default")


def _demo(name: str) -> np.ndarray:
    with Image.open(DEMO / name) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _centroid(label_map: np.ndarray, classes: tuple[int, ...]) -> tuple[float, float] | None:
    ys, xs = np.nonzero(np.isin(label_map, classes))
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def _face_is_right(label_map: np.ndarray, head: tuple[int, int, int, int]) -> str | None:
    """None if brows, eyes, nose and mouth all sit inside the head, top to bottom, sides apart."""
    parts = {
        "brows": _centroid(label_map, (C["brow_1"], C["brow_2"])),
        "eye_1": _centroid(label_map, (C["eye_1"],)),
        "eye_2": _centroid(label_map, (C["eye_2"],)),
        "nose": _centroid(label_map, (C["nose"],)),
        "mouth": _centroid(label_map, (C["upper_lip"], C["inner_mouth"], C["lower_lip"])),
    }
    x0, y0, x1, y1 = head
    for name, point in parts.items():
        if point is None:
            return f"no {name}"
        if not (x0 <= point[0] <= x1 and y0 <= point[1] <= y1):
            return f"{name} at {point[0]:.0f},{point[1]:.0f} is outside the head {head}"
    eyes_y = (parts["eye_1"][1] + parts["eye_2"][1]) / 2
    if not parts["brows"][1] < eyes_y < parts["nose"][1] < parts["mouth"][1]:
        return "brows, eyes, nose and mouth are not in order from top to bottom"
    if not parts["eye_1"][0] < parts["nose"][0] < parts["eye_2"][0]:
        return "eye_1 is not on the image's left of the nose and eye_2 on its right"
    return None


@pytest.mark.parametrize("name", sorted(HEADS))
def test_shipped_weights_find_and_parse_the_face_in_every_demo_photo(default_parser, name):
    result = default_parser.parse([_demo(name)])[0]
    assert _face_is_right(result.label_map, HEADS[name]) is None, _face_is_right(result.label_map, HEADS[name])


def test_without_the_search_the_wide_shots_go_wrong(default_parser):
    # Why the search exists: the 128 px first pass alone puts the face on the space suit.
    first_pass_only = dataclasses.replace(default_parser.cfg, search_below=0.0)
    parser = load_parser("stn-icnn/default")
    parser.cfg = first_pass_only
    wrong = [name for name in ("astronaut_warm.jpg", "astronaut_wide.jpg") if _face_is_right(parser.parse([_demo(name)])[0].label_map, HEADS[name])]
    assert wrong == ["astronaut_warm.jpg", "astronaut_wide.jpg"]


def test_the_search_leaves_confident_results_alone(default_parser):
    image = _demo("hopper.jpg")
    parser = load_parser("stn-icnn/default")
    parser.cfg = dataclasses.replace(default_parser.cfg, search_below=0.0)
    first = parser.parse([image])[0]
    assert first.confidences.mean() >= default_parser.cfg.search_below
    searched = default_parser.parse([image])[0]
    assert np.array_equal(first.label_map, searched.label_map)
