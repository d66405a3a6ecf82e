"""Readers for face-parsing datasets on disk (Helen layout, CelebAMask-HQ layout) as class maps.

Every reader gives (name, image HxWx3 uint8 RGB, label HxW uint8 class indices of
batch_parse.labels, skin included: Helen's face_skin, CelebAMask's skin) per sample, by index or
by iteration, at the image's own resolution.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from batch_parse.labels import CELEBAMASK_TO_CLASS, HELEN_LABELS, HELEN_TO_CLASS

SPLITS = ("train", "val", "test")
# Helen's own split files (SmithCVPR2013_dataset_resized); the teacher writes the same ones.
HELEN_SPLIT_FILES = {"train": "exemplars.txt", "val": "tuning.txt", "test": "testing.txt"}
CELEBAMASK_IMAGES = "CelebA-HQ-img"
CELEBAMASK_MASKS = "CelebAMask-HQ-mask-anno"

Sample = tuple[str, np.ndarray, np.ndarray]


def hash_split(name: str) -> str:
    """train / val / test (80/10/10) fixed by the name alone, so adding images moves none."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def _read_name_list(path: Path) -> list[str]:
    """Names from a list file; Helen's own files write "1 , NAME", ours just "NAME"."""
    names = []
    for line in path.read_text().splitlines():
        name = line.rsplit(",", 1)[-1].strip()
        if name:
            names.append(Path(name).stem if name.endswith((".jpg", ".png")) else name)
    return names


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def _read_grey(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except OSError as error:
        raise ValueError(f"cannot read mask {path}: {error}") from None


def read_helen_labels(label_dir: Path, name: str) -> np.ndarray:
    """label_dir/NAME_lblXX.png (one grey map per Helen label) -> (H, W) uint8 class indices."""
    greys = np.stack([_read_grey(label_dir / f"{name}_lbl{i:02d}.png") for i in range(len(HELEN_LABELS))])
    # The strongest grey value wins; argmax breaks ties towards the lower label index.
    return np.asarray(HELEN_TO_CLASS, dtype=np.uint8)[greys.argmax(axis=0)]


class HelenDataset:
    """images/NAME.jpg + labels/NAME/NAME_lblXX.png (one grey map per Helen label)."""

    def __init__(self, root: str | Path, split: str):
        _check_split(split)
        self.root = Path(root)
        list_file = self.root / HELEN_SPLIT_FILES[split]
        if not list_file.is_file():
            raise ValueError(f"Helen folder {self.root} has no {list_file.name} (the {split} split)")
        self.names = _read_name_list(list_file)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        name = self.names[index]
        image = read_rgb(self.root / "images" / f"{name}.jpg")
        label = read_helen_labels(self.root / "labels" / name, name)
        if label.shape != image.shape[:2]:
            raise ValueError(f"Helen labels of {name} are {label.shape}, image is {image.shape[:2]}")
        return name, image, label

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


class CelebAMaskDataset:
    """CelebA-HQ-img/N.jpg + CelebAMask-HQ-mask-anno/<folder>/NNNNN_<part>.png (binary masks)."""

    def __init__(self, root: str | Path, split: str, split_list: str | Path | None = None):
        """split_list: a file naming this split's images; without one, names are hash-split."""
        _check_split(split)
        self.root = Path(root)
        images = sorted(
            (p.stem for p in (self.root / CELEBAMASK_IMAGES).iterdir() if p.suffix == ".jpg"),
            key=lambda s: (len(s), s),
        )
        if split_list is not None:
            split_list = Path(split_list)
            if not split_list.is_file():
                raise ValueError(f"split list not found: {split_list}")
            wanted = set(_read_name_list(split_list))
            self.names = [n for n in images if n in wanted]
        else:
            self.names = [n for n in images if hash_split(n) == split]
        # Mask files are spread over numbered folders; index them once rather than guess the folder.
        self._masks: dict[str, dict[str, Path]] = defaultdict(dict)
        for folder in (self.root / CELEBAMASK_MASKS).iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                number, _, part = path.stem.partition("_")
                if part in CELEBAMASK_TO_CLASS and number.isdigit():
                    self._masks[str(int(number))][part] = path

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        name = self.names[index]
        image = read_rgb(self.root / CELEBAMASK_IMAGES / f"{name}.jpg")
        height, width = image.shape[:2]
        label = np.zeros((height, width), dtype=np.uint8)
        masks = self._masks.get(str(int(name)) if name.isdigit() else name, {})
        # Later parts of the mapping override earlier ones (inner mouth over lips, say).
        for part, class_index in CELEBAMASK_TO_CLASS.items():
            if part not in masks:
                continue
            with Image.open(masks[part]) as mask_image:
                # Masks are 512x512 for 1024x1024 images; nearest keeps them binary.
                mask = np.asarray(mask_image.convert("L").resize((width, height), Image.NEAREST))
            label[mask > 127] = class_index
        return name, image, label

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


def open_dataset(
    root: str | Path, split: str, split_list: str | Path | None = None
) -> HelenDataset | CelebAMaskDataset:
    """The reader for whichever layout root holds; ValueError if it is neither."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    if (root / "images").is_dir() and (root / "labels").is_dir():
        if split_list is not None:
            raise ValueError("split_list applies to CelebAMask-HQ; Helen folders carry their own split files")
        return HelenDataset(root, split)
    if (root / CELEBAMASK_IMAGES).is_dir() and (root / CELEBAMASK_MASKS).is_dir():
        return CelebAMaskDataset(root, split, split_list)
    raise ValueError(
        f"{root} is neither a Helen folder (images/, labels/) "
        f"nor a CelebAMask-HQ folder ({CELEBAMASK_IMAGES}/, {CELEBAMASK_MASKS}/)"
    )
