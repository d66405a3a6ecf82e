"""Helen-layout folders of real face crops (UTKFace from ../shared) with simple part ellipses as labels.

For tests of the training machinery: they check what training does with labels, not what a model learns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from batch_parse.labels import HELEN_LABELS
from corpus import utkface_dir

# Helen label -> ellipse (x0, y0, x1, y1) as fractions of the side; drawn in this order (later wins).
ELLIPSES = {
    "face_skin": (0.12, 0.10, 0.88, 0.98), "left_brow": (0.22, 0.28, 0.42, 0.33), "right_brow": (0.58, 0.28, 0.78, 0.33),
    "left_eye": (0.25, 0.36, 0.40, 0.42), "right_eye": (0.60, 0.36, 0.75, 0.42), "nose": (0.43, 0.40, 0.57, 0.62),
    "upper_lip": (0.36, 0.68, 0.64, 0.73), "inner_mouth": (0.38, 0.73, 0.62, 0.75), "lower_lip": (0.36, 0.75, 0.64, 0.81),
}


def write_helen(root: Path, splits: dict[str, int]) -> Path:
    """A Helen-layout folder of real face crops (UTKFace) with ellipse labels, sizes varied."""
    photos = sorted(utkface_dir().glob("*.jpg"))[: sum(splits.values())]
    assert len(photos) == sum(splits.values()), f"too few UTKFace crops in {utkface_dir()}"
    (root / "images").mkdir(parents=True)
    files = {"train": "exemplars.txt", "val": "tuning.txt", "test": "testing.txt"}
    k = 0
    for split, count in splits.items():
        names = []
        for _ in range(count):
            name = f"face{k:03d}"
            side = (96, 120, 150)[k % 3]
            with Image.open(photos[k]) as im:
                im.convert("RGB").resize((side, side + 8 * (k % 2))).save(root / "images" / f"{name}.jpg")
            w, h = side, side + 8 * (k % 2)
            index = Image.new("L", (w, h), 0)
            draw = ImageDraw.Draw(index)
            for label, (x0, y0, x1, y1) in ELLIPSES.items():
                draw.ellipse((x0 * w, y0 * h, x1 * w, y1 * h), fill=HELEN_LABELS.index(label))
            index = np.asarray(index)
            (root / "labels" / name).mkdir(parents=True)
            for i in range(len(HELEN_LABELS)):
                Image.fromarray(np.where(index == i, 255, 0).astype(np.uint8)).save(root / "labels" / name / f"{name}_lbl{i:02d}.png")
            names.append(name)
            k += 1
        (root / files[split]).write_text("".join(f"{n}\n" for n in names))
    return root
