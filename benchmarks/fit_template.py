"""Measure align.TEMPLATE: the median five-landmark layout of the UTKFace crops the weights were trained on.

    python benchmarks/fit_template.py [--limit 2000]

Prints the template (fractions of the crop side) to paste into batch_parse/faces/align.py. Faces are
mapped to a common upright frame first (a similarity fit to the current template, then back into
that crop's own 200 px frame), so that small tilts do not blur the median.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from corpus import utkface_dir  # noqa: E402

from batch_parse.faces import align, load_detector  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = load_detector("mtcnn")
    paths = sorted(utkface_dir().glob("*.jpg"))[: args.limit]
    points, sizes = [], []
    for start in range(0, len(paths), 32):
        images = [np.asarray(Image.open(p).convert("RGB")) for p in paths[start : start + 32]]
        for image, found in zip(images, detector.detect(images)):
            if len(found.scores) == 1:  # one face, as a training crop has
                points.append(found.landmarks[0] / np.array(image.shape[1::-1], np.float64))
                sizes.append(image.shape[:2])
    points = np.stack(points)
    median = np.median(points, axis=0)
    # Symmetric by construction: the parser is trained with horizontal flips (eye_1 <-> eye_2 swapped).
    mirrored = median[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]
    template = (median + mirrored) / 2
    spread = np.percentile(np.linalg.norm(points - median, axis=-1), 90, axis=0)
    print(f"{len(points)} of {len(paths)} UTKFace crops with exactly one face")
    print("median landmarks (fraction of side):", np.round(median, 4).tolist())
    print("90th percentile distance to median:", np.round(spread, 4).tolist())
    print("TEMPLATE (symmetrised):")
    for x, y in template:
        print(f"        [{x:.4f}, {y:.4f}],")
    print("inter-ocular distance / side:", round(float(template[1, 0] - template[0, 0]), 4))
    print("frame side at the current max:", align.DEFAULT_MAX_SIDE)


if __name__ == "__main__":
    main()
