"""Do fp16 weights label like their fp32 original? Share of pixels with the same class, on real faces.

The model card ships float16 weights only where labels agree with float32 on >= 99.5% of pixels.
Both files are loaded (fp16 weights are widened to float32 on load, so only the rounding of the
weights is measured) and run on the same images of a dataset split (a face-pool folder's aligned
faces, or any Helen-layout folder).

    python benchmarks/fp16_agreement.py FP32.safetensors FP16.safetensors DATA [--split test] [--limit 500]
"""

from __future__ import annotations

import argparse

import numpy as np

from batch_parse.labels import NUM_PART_CLASSES, SKIN
from batch_parse.model.parser import load_parser
from batch_parse.train.datasets import open_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32")
    ap.add_argument("fp16")
    ap.add_argument("data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=500)
    args = ap.parse_args()
    a, b = load_parser(args.fp32, device="cpu", precision="fp32"), load_parser(args.fp16, device="cpu", precision="fp32")
    ds = open_dataset(args.data, args.split)
    same = total = 0
    part_same = part_total = 0
    skin_same = skin_total = 0
    for start in range(0, min(args.limit, len(ds)), 32):
        images = [ds[i][1] for i in range(start, min(start + 32, args.limit, len(ds)))]
        for x, y in zip(a.parse(images), b.parse(images)):
            x, y = np.asarray(x.label_map), np.asarray(y.label_map)
            same += int((x == y).sum())
            total += x.size
            # Face parts (classes 1-8) and skin apart: skin is large and would hide part disagreement.
            parts = ((x > 0) & (x < NUM_PART_CLASSES)) | ((y > 0) & (y < NUM_PART_CLASSES))
            part_same += int(((x == y) & parts).sum())
            part_total += int(parts.sum())
            skin = (x == SKIN) | (y == SKIN)
            skin_same += int(((x == y) & skin).sum())
            skin_total += int(skin.sum())
    print(f"{args.fp16} vs {args.fp32} on {min(args.limit, len(ds))} images of {args.data} [{args.split}]: "
          f"{100 * same / total:.2f}% of pixels agree; {100 * part_same / max(part_total, 1):.2f}% of face-part pixels"
          + (f"; {100 * skin_same / skin_total:.2f}% of skin pixels" if skin_total else ""))


if __name__ == "__main__":
    main()
