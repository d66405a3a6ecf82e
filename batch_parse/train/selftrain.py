"""Labels for the faces the teacher cannot label: a student's own labels, kept where flip-consistent.

The mesh gives no labels, or labels that change when the face is mirrored, on most turned
heads and profiles (facepool.py counts them per pose). A trained student is asked instead, on
the face and on its mirror image; where the two agree (flip agreement >= KEEP), its labels
become training labels for the next round. Only training-split faces are used.

Output: a folder in Helen layout (images/, labels/, exemplars.txt listing the kept faces) that
`batch-parse train --extra DIR` adds to the training set, and selftrain.json with the counts and,
where human points exist, how often the kept and the dropped labels hit them (whether the flip
check selects good labels).

Usage: python -m batch_parse.train.selftrain FACEPOOL DST [--model NAME] [--keep 0.8]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from batch_parse.labels import CLASS_TO_HELEN
from batch_parse.train.datasets import HELEN_SPLIT_FILES
from batch_parse.train.facepool import FLIP_KEEP, agreement, mirror_labels
from batch_parse.train.facerecord import read_records
from batch_parse.train.probes import probe_hits, read_face
from batch_parse.train.teacher import write_sample

KEEP = FLIP_KEEP
_CLASS_TO_HELEN = np.asarray(CLASS_TO_HELEN, np.uint8)  # our maps written in Helen's layout


def self_label(facepool: str | Path, dst: str | Path, model: str = "stn-icnn/v1", keep: float = KEEP,
               batch_size: int = 32, limit: int | None = None) -> dict:
    from batch_parse.model.parser import load_parser

    facepool, dst = Path(facepool), Path(dst)
    parser = load_parser(model, device="cpu")
    wanted = [r for r in read_records(facepool) if r.split == "train" and r.written and not r.clean][:limit]
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(parents=True, exist_ok=True)
    kept: list[str] = []
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # "kept" / "dropped" -> [hits, probes]
    for start in range(0, len(wanted), batch_size):
        chunk = wanted[start : start + batch_size]
        faces = [read_face(facepool, r.name) for r in chunk]
        direct = parser.parse(faces)
        mirrored = parser.parse([f[:, ::-1] for f in faces])
        for r, face, a, b in zip(chunk, faces, direct, mirrored, strict=True):
            labels = np.asarray(a.label_map)
            # An empty map agrees with its mirror perfectly and teaches nothing: not kept.
            ok = bool((labels > 0).any()) and agreement(labels, mirror_labels(np.asarray(b.label_map))) >= keep
            pose = r.pose
            counts[pose]["faces"] += 1
            counts[pose]["kept"] += ok
            for _, hit in probe_hits(labels, r.probes):
                hits["kept" if ok else "dropped"][0] += hit
                hits["kept" if ok else "dropped"][1] += 1
            if ok:
                write_sample(dst, r.name, face, _CLASS_TO_HELEN[labels])
                kept.append(r.name)
        print(f"selftrain: {min(start + batch_size, len(wanted))}/{len(wanted)} faces, {len(kept)} kept", file=sys.stderr, flush=True)
    (dst / HELEN_SPLIT_FILES["train"]).write_text("".join(f"{n}\n" for n in sorted(kept)))
    for split in ("val", "test"):  # the extra set adds training faces only
        (dst / HELEN_SPLIT_FILES[split]).write_text("")
    report = {
        "model": model,
        "keep": keep,
        "by_pose": {p: dict(c) for p, c in counts.items()},
        "probe_hit_rate": {k: {"rate": h / n if n else None, "probes": n} for k, (h, n) in hits.items()},
    }
    (dst / "selftrain.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m batch_parse.train.selftrain", description=__doc__.splitlines()[0])
    ap.add_argument("facepool", help="a folder built by python -m batch_parse.train.facepool")
    ap.add_argument("dst", help="output folder (Helen layout)")
    ap.add_argument("--model", default="stn-icnn/v1", help="the student: registry name or .safetensors path")
    ap.add_argument("--keep", type=float, default=KEEP, help="smallest flip agreement kept")
    ap.add_argument("--limit", type=int, default=None, help="first N candidate faces only")
    args = ap.parse_args(argv)
    try:
        report = self_label(args.facepool, args.dst, args.model, args.keep, limit=args.limit)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
