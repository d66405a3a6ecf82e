"""The parser alone on one device: faces/s at several batch sizes per precision, and each precision's labels vs fp32.

    python benchmarks/gpu_model.py                                      # CUDA: batches 16..1024, every precision
    python benchmarks/gpu_model.py --device cpu --batch-sizes 4 --faces 8 --repeats 1   # dry run on a CPU

Faces are real UTKFace crops (200x200), each parsed whole (`parser.parse`): the same network work per
face as the face-first path (stage 1 at 128x128, six 81x81 part crops), without the detector.
faces/s = batch / median seconds of --repeats calls after one warm-up, CUDA synchronised.
Agreement: share of label-map pixels (and of face-part pixels) equal to fp32's on --faces faces;
the fp32 reference runs with TF32 off, so it is the same arithmetic as on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from batch_parse.model import load_parser
from batch_parse.model.parser import PRECISIONS

DEFAULT_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-sizes", default="16,64,256,1024")
    p.add_argument("--precisions", default="fp32,mixed,fast,bf16,fp16")
    p.add_argument("--faces", type=int, default=1024, help="faces for the agreement check (default 1024)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--face-dir", type=Path, default=DEFAULT_FACES)
    args = p.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = args.precisions.split(",")
    if bad := [x for x in precisions if x not in PRECISIONS or x == "auto"]:
        p.error(f"unknown precision {bad[0]!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu for a dry run)", file=sys.stderr)
        return 1
    paths = sorted(args.face_dir.glob("*.jpg"))
    if not paths:
        print(f"error: no face JPEGs in {args.face_dir}", file=sys.stderr)
        return 1
    needed = max(max(sizes), args.faces)
    faces = [np.asarray(Image.open(paths[i % len(paths)]).convert("RGB")) for i in range(needed)]
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"parser alone on {name}, torch {torch.__version__}; faces/s (median of {args.repeats}) per batch size")
    print(f"{'precision':<10}" + "".join(f"{'bs=' + str(b):>10}" for b in sizes) + f"{'pixels agree':>14}{'part pixels':>13}")

    reference = None
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    for precision in ["fp32"] + [x for x in precisions if x != "fp32"]:
        parser = load_parser("stn-icnn/default", device=args.device, precision=precision)
        if precision == "fp32":  # a true fp32 reference, as on a CPU
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        rates = []
        for b in sizes:
            batch = faces[:b]
            parser.parse(batch)  # warm-up: kernels, allocator
            sync()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                parser.parse(batch)
                sync()
                times.append(time.perf_counter() - start)
            rates.append(b / statistics.median(times))
        labels = [r.label_map for start in range(0, args.faces, 256) for r in parser.parse(faces[start : min(args.faces, start + 256)])]
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        if reference is None:
            reference = labels
        same = sum(int((a == b).sum()) for a, b in zip(labels, reference))
        total = sum(a.size for a in labels)
        part = [(a > 0) | (b > 0) for a, b in zip(labels, reference)]
        part_same = sum(int(((a == b) & m).sum()) for a, b, m in zip(labels, reference, part))
        part_total = sum(int(m.sum()) for m in part)
        if precision in precisions:
            print(f"{precision:<10}" + "".join(f"{r:>10.0f}" for r in rates)
                  + f"{100 * same / total:>13.3f}%{100 * part_same / max(part_total, 1):>12.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
