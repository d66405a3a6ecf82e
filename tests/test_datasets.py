"""Dataset readers on tiny generated Helen and CelebAMask-HQ folders with known masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_parse.labels import HELEN_LABELS
from batch_parse.train.datasets import CelebAMaskDataset, HelenDataset, hash_split, open_dataset

H, W = 4, 6
GREEN = (20, 200, 40)


def _helen_label_index(name: str) -> int:
    return HELEN_LABELS.index(name)


def _write_helen_sample(root: Path, name: str, greys: dict[str, np.ndarray]) -> None:
    Image.new("RGB", (W, H), GREEN).save(root / "images" / f"{name}.jpg", quality=100)
    label_dir = root / "labels" / name
    label_dir.mkdir(parents=True)
    for i, label in enumerate(HELEN_LABELS):
        grey = greys.get(label, np.zeros((H, W), np.uint8)).astype(np.uint8)
        Image.fromarray(grey).save(label_dir / f"{name}_lbl{i:02d}.png")


@pytest.fixture()
def helen_root(tmp_path: Path) -> Path:
    root = tmp_path / "helen"
    (root / "images").mkdir(parents=True)
    zeros = np.zeros((H, W), np.uint8)
    bg = np.full((H, W), 255, np.uint8)
    bg[0, :] = 0
    skin = zeros.copy()
    skin[0, 0] = 255
    hair = zeros.copy()
    hair[0, 1] = 255
    left_brow = zeros.copy()
    left_brow[0, 2] = 255
    right_brow = zeros.copy()
    right_brow[0, 3] = 200  # soft grey: the strongest label wins...
    nose = zeros.copy()
    nose[0, 3] = 100
    nose[0, 4] = 255
    inner_mouth = zeros.copy()
    inner_mouth[0, 5] = 180  # ...and a tie goes to the lower label index (upper lip)
    upper_lip = zeros.copy()
    upper_lip[0, 5] = 180
    _write_helen_sample(
        root,
        "100032540_1",
        {
            "background": bg,
            "face_skin": skin,
            "hair": hair,
            "left_brow": left_brow,
            "right_brow": right_brow,
            "nose": nose,
            "upper_lip": upper_lip,
            "inner_mouth": inner_mouth,
        },
    )
    eyes = {"background": np.full((H, W), 255, np.uint8)}
    eyes["background"][1, 1:5] = 0
    for label, col in (("left_eye", 1), ("right_eye", 2), ("lower_lip", 3), ("inner_mouth", 4)):
        eyes[label] = zeros.copy()
        eyes[label][1, col] = 255
    _write_helen_sample(root, "2402520393_1", eyes)
    # Helen's own split files number their lines ("1 , NAME"); the teacher writes bare names.
    (root / "exemplars.txt").write_text("1 , 100032540_1\n")
    (root / "tuning.txt").write_text("")
    (root / "testing.txt").write_text("2402520393_1\n")
    return root


def test_helen_reads_class_maps(helen_root):
    train = open_dataset(helen_root, "train")
    assert isinstance(train, HelenDataset)
    assert len(train) == 1
    name, image, label = train[0]
    assert name == "100032540_1"
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - GREEN).max() <= 3
    expected = np.zeros((H, W), np.uint8)
    # skin -> 9 (skin); hair -> 0; left_brow -> 1; right_brow beats nose -> 2; nose -> 5; tie -> upper_lip 6
    expected[0] = [9, 0, 1, 2, 5, 6]
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected)


def test_helen_splits(helen_root):
    assert [s[0] for s in open_dataset(helen_root, "test")] == ["2402520393_1"]
    _, _, label = open_dataset(helen_root, "test")[0]
    expected = np.zeros((H, W), np.uint8)
    expected[1, 1:5] = [3, 4, 8, 7]
    np.testing.assert_array_equal(label, expected)
    assert len(open_dataset(helen_root, "val")) == 0
    with pytest.raises(ValueError, match="unknown split"):
        open_dataset(helen_root, "validation")


def test_helen_missing_split_file(helen_root):
    (helen_root / "tuning.txt").unlink()
    with pytest.raises(ValueError, match="no tuning.txt"):
        open_dataset(helen_root, "val")


# CelebAMask-HQ stand-in: masks at half the image size, like 512 masks for 1024 images.
CELEBA_NAMES = [str(n) for n in range(12)]
MASK_PARTS_4x4 = {
    "skin": [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]],  # skin (9) where no part lies over it
    "r_brow": [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    "l_brow": [[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    "r_eye": [[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    "l_eye": [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
    "nose": [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    "u_lip": [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]],
    "mouth": [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]],  # overrides u_lip
    "l_lip": [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]],  # overrides mouth
}
EXPECTED_4x4 = [
    [1, 5, 5, 2],
    [3, 5, 5, 4],
    [6, 7, 7, 6],
    [8, 8, 8, 9],
]


@pytest.fixture()
def celeba_root(tmp_path: Path) -> Path:
    root = tmp_path / "CelebAMask-HQ"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    for name in CELEBA_NAMES:
        Image.new("RGB", (8, 8), GREEN).save(root / "CelebA-HQ-img" / f"{name}.jpg")
        number = int(name)
        folder = root / "CelebAMask-HQ-mask-anno" / str(number // 5)  # files spread over folders
        folder.mkdir(parents=True, exist_ok=True)
        for part, mask in MASK_PARTS_4x4.items():
            # Image 11 has no nose file: its nose pixels stay background.
            if number == 11 and part == "nose":
                continue
            Image.fromarray(np.array(mask, np.uint8) * 255).save(folder / f"{number:05d}_{part}.png")
    return root


def _all_samples(root: Path) -> dict[str, np.ndarray]:
    samples = {}
    for split in ("train", "val", "test"):
        for name, image, label in open_dataset(root, split):
            assert hash_split(name) == split
            assert image.shape == (8, 8, 3)
            samples[name] = label
    return samples


def test_celebamask_reads_class_maps(celeba_root):
    samples = _all_samples(celeba_root)
    assert sorted(samples, key=int) == CELEBA_NAMES
    expected = np.kron(np.array(EXPECTED_4x4, np.uint8), np.ones((2, 2), np.uint8))
    for name in CELEBA_NAMES[:-1]:
        np.testing.assert_array_equal(samples[name], expected)
    without_nose = expected.copy()
    without_nose[expected == 5] = 9  # no nose mask: the skin under it shows
    np.testing.assert_array_equal(samples["11"], without_nose)


def test_celebamask_split_list(celeba_root, tmp_path):
    split_list = tmp_path / "test_list.txt"
    split_list.write_text("3.jpg\n10\n")
    dataset = open_dataset(celeba_root, "test", split_list=split_list)
    assert isinstance(dataset, CelebAMaskDataset)
    assert dataset.names == ["3", "10"]
    with pytest.raises(ValueError, match="split list not found"):
        open_dataset(celeba_root, "test", split_list=tmp_path / "nope.txt")


def test_neither_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="neither a Helen folder"):
        open_dataset(tmp_path, "train")
    with pytest.raises(ValueError, match="dataset folder not found"):
        open_dataset(tmp_path / "missing", "train")
