"""The MediaPipe teacher on real UTKFace photos: Helen layout, parts present, sides, skipped non-faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_parse.labels import HELEN_LABELS, HELEN_TO_CLASS, MIRROR_CLASS, SKIN
from batch_parse.train.datasets import HELEN_SPLIT_FILES, hash_split

pytest.importorskip("mediapipe")
from batch_parse.train.teacher import main, pseudo_label  # noqa: E402
from corpus import utkface_dir  # noqa: E402

UTKFACE = utkface_dir()
# Open mouths, so inner_mouth is non-empty too (a closed mouth rightly has none, as in Helen).
FACES = (
    "16_1_0_20170109212357604.jpg.chip.jpg",
    "35_0_4_20170104201734834.jpg.chip.jpg",
    "65_1_0_20170110135759710.jpg.chip.jpg",
)
PART_CLASSES = range(1, 9)


def _class_map(root: Path, name: str) -> np.ndarray:
    masks = np.stack(
        [np.asarray(Image.open(root / "labels" / name / f"{name}_lbl{i:02d}.png")) for i in range(len(HELEN_LABELS))]
    )
    assert set(np.unique(masks)) <= {0, 255}
    # The teacher's masks partition the image: exactly one label per pixel.
    assert ((masks == 255).sum(axis=0) == 1).all()
    return np.asarray(HELEN_TO_CLASS)[masks.argmax(axis=0)]


def _centroid_x(class_map: np.ndarray, class_index: int) -> float:
    return float(np.nonzero(class_map == class_index)[1].mean())


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[Path, Path, dict[str, int]]:
    if not all((UTKFACE / f).is_file() for f in FACES):
        pytest.skip(f"UTKFace sample images not found under {UTKFACE}")
    src = tmp_path_factory.mktemp("src")
    for f in FACES:
        (src / f).write_bytes((UTKFACE / f).read_bytes())
    # A mirrored face, as PNG: MediaPipe's own left/right must not decide the sides.
    Image.open(UTKFACE / FACES[0]).transpose(Image.FLIP_LEFT_RIGHT).save(src / "mirrored.png")
    Image.new("RGB", (200, 200), (128, 128, 128)).save(src / "grey.jpg")
    dst = tmp_path_factory.mktemp("dst")
    counts = pseudo_label(src, dst, workers=1)
    return src, dst, counts


def test_counts_skip_the_image_without_a_face(labelled):
    _, dst, counts = labelled
    assert counts["seen"] == 5
    assert counts["labelled"] == 4
    assert counts["no_face"] == 1
    assert counts["train"] + counts["val"] + counts["test"] == 4
    assert not (dst / "images" / "grey.jpg").exists()
    assert not (dst / "labels" / "grey").exists()


def test_helen_layout(labelled):
    src, dst, _ = labelled
    names = [f.split(".")[0] for f in FACES] + ["mirrored"]
    for f in FACES:
        name = f.split(".")[0]
        assert (dst / "images" / f"{name}.jpg").read_bytes() == (src / f).read_bytes()
    with Image.open(dst / "images" / "mirrored.jpg") as mirrored:
        assert mirrored.format == "JPEG"
    for name in names:
        for i in range(len(HELEN_LABELS)):
            with Image.open(dst / "labels" / name / f"{name}_lbl{i:02d}.png") as mask:
                assert mask.mode == "L" and mask.size == (200, 200)
    listed = {}
    for split, file_name in HELEN_SPLIT_FILES.items():
        for name in (dst / file_name).read_text().split():
            listed[name] = split
    assert listed == {name: hash_split(name) for name in names}


@pytest.mark.parametrize("name", [f.split(".")[0] for f in FACES] + ["mirrored"])
def test_parts_present_and_placed(labelled, name):
    _, dst, _ = labelled
    class_map = _class_map(dst, name)
    for c in PART_CLASSES:
        assert (class_map == c).sum() > 0, f"class {c} empty in {name}"
    assert _centroid_x(class_map, 1) < _centroid_x(class_map, 2)  # brow_1 on the image's left
    assert _centroid_x(class_map, 3) < _centroid_x(class_map, 4)  # eye_1 on the image's left
    lips_y, lips_x = np.nonzero(np.isin(class_map, (6, 8)))
    mouth_y, mouth_x = np.nonzero(class_map == 7)
    assert lips_x.min() <= mouth_x.min() and mouth_x.max() <= lips_x.max()
    assert lips_y.min() <= mouth_y.min() and mouth_y.max() <= lips_y.max()
    # Brows above eyes above nose above mouth, in image rows.
    rows = {c: np.nonzero(class_map == c)[0].mean() for c in PART_CLASSES}
    assert max(rows[1], rows[2]) < min(rows[3], rows[4]) < rows[5] < rows[6] < rows[8]


def test_mirrored_face_mirrors_the_label_map(labelled):
    _, dst, _ = labelled
    original = _class_map(dst, FACES[0].split(".")[0])
    mirrored = _class_map(dst, "mirrored")[:, ::-1]
    swap = np.array(MIRROR_CLASS)  # flipping the image swaps sides 1 and 2
    # The parts mirror closely; the face oval's edge (skin) less so, so it is held to its own bound.
    parts = np.where(original == SKIN, 0, original), np.where(swap[mirrored] == SKIN, 0, swap[mirrored])
    assert (parts[0] == parts[1]).mean() > 0.98, (parts[0] == parts[1]).mean()
    skin = (original == SKIN), (swap[mirrored] == SKIN)
    assert (skin[0] & skin[1]).sum() / max(1, (skin[0] | skin[1]).sum()) > 0.9  # IoU of the two skin regions


def test_cli_rejects_a_missing_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: source folder not found: {tmp_path / 'nope'}"
