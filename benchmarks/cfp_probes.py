"""Human-point hits on CFP photos, frontal vs profile, per model and per stage combination, without a face pool.

    python benchmarks/cfp_probes.py                                   # v2, v3 and their stage swaps, test persons
    python benchmarks/cfp_probes.py --models stn-icnn/v2,runs/x.safetensors --no-swaps --split val
    python benchmarks/cfp_probes.py --models stn-icnn/v2,stn-icnn/v4 --no-swaps --json cfp.json

What it measures: CFP (../shared/data/facepool/cfp) photos of one split of people (the face pool's
own hash split of the person, batch_parse.train.datasets.hash_split, so `test` is the people no
shipped model trained on), each photo through the product (MTCNN, alignment, parse_faces, fp32),
the largest face's label map placed in the photo, and each of CFP's hand-placed points (reduced to
one probe a part as the face pool does, facepool.CFP_PROBES) scored as a hit when the pixel under it
is of that part (train.probes.probe_hits). A photo with no face misses all its probes. This is the
face pool's probe score on CFP alone, in photo pixels; `batch-parse eval FACEPOOL --split test` is
the full one (every source, F1 too) and needs the 50-minute pool build.

Stage swaps: the first two --models' localisers exchanged (A's stage 1 and parts with B's
localiser, and the reverse), which says whether a difference between two models comes from stage 1
or from the localiser. The localiser reads stage 1's part probabilities only (skin folded into
background), so a 9-class and a 10-class model swap cleanly.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from batch_parse.faces import load_detector  # noqa: E402
from batch_parse.model.parser import FaceParser  # noqa: E402
from batch_parse.model.weights import file_sha256, load_weights, resolve  # noqa: E402
from batch_parse.train.datasets import SPLITS, hash_split  # noqa: E402
from batch_parse.train.facepool import cfp_probes  # noqa: E402
from batch_parse.train.probes import ALL, probe_hits  # noqa: E402

POSES = ("frontal", "profile")


def cfp_photos(split: str, limit: int | None) -> list[tuple[Path, str, list]]:
    from corpus import shared_dir

    root = shared_dir() / "data" / "facepool" / "cfp"
    photos = []
    for path in sorted(root.glob("images/*/*/*.jpg")):
        person, pose = path.parts[-3], path.parts[-2]
        fiducials = root / "fiducials" / person / pose / f"{path.stem}.txt"
        # The face pool groups CFP photos by person ("cfp-NNN"): the same split here.
        if hash_split(f"cfp-{person}") == split and fiducials.is_file():
            photos.append((path, pose, cfp_probes(fiducials)))
    if not photos:
        raise SystemExit(f"error: no CFP photos with fiducials for split {split!r} under {root}")
    return photos[:limit]


def parsers(models: list[str], swaps: bool) -> dict[str, FaceParser]:
    loaded = {}
    for name in models:
        display, path = resolve(name)
        model, _ = load_weights(path)
        loaded[display] = (model, file_sha256(path))
    out = {name: FaceParser(model, name, sha, device="cpu", precision="fp32") for name, (model, sha) in loaded.items()}
    if swaps and len(loaded) >= 2:
        (a, (ma, _)), (b, (mb, _)) = list(loaded.items())[:2]
        for first, second, name in ((ma, mb, f"{a} + {b}'s localiser"), (mb, ma, f"{b} + {a}'s localiser")):
            swapped = copy.deepcopy(first)
            swapped.localiser.load_state_dict(second.localiser.state_dict())
            out[name] = FaceParser(swapped, name, "0" * 64, device="cpu", precision="fp32")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="stn-icnn/v2,stn-icnn/v3", help="comma-separated registry names or paths")
    p.add_argument("--no-swaps", action="store_true", help="do not exchange the first two models' localisers")
    p.add_argument("--split", default="test", choices=SPLITS, help="which people (default test)")
    p.add_argument("--limit", type=int, default=None, help="first N photos of the split")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the hit rates as JSON (benchmarks/model_targets.py reads it)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    photos = cfp_photos(args.split, args.limit)
    variants = parsers(args.models.split(","), not args.no_swaps)
    detector = load_detector("mtcnn", device="cpu")
    print(f"CFP {args.split} people: {len(photos)} photos "
          + ", ".join(f"{sum(p[1] == pose for p in photos)} {pose}" for pose in POSES)
          + f"; load average {os.getloadavg()[0]:.1f}")
    tally: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    missed = defaultdict(int)
    for start in range(0, len(photos), 16):
        chunk = photos[start : start + 16]
        images = [np.asarray(Image.open(path).convert("RGB")) for path, _, _ in chunk]
        found = detector.detect(images)
        for (_, pose, _), faces in zip(chunk, found):
            missed[pose] += len(faces.scores) == 0
        for name, parser in variants.items():
            largest = {}
            for r in parser.parse_faces(images, found):
                largest.setdefault(r.image_index, r)  # detection order: largest first
            for i, (_, pose, probes) in enumerate(chunk):
                h, w = images[i].shape[:2]
                label_map = largest[i].photo_label_map(w, h) if i in largest else None
                for part, hit in probe_hits(label_map, probes):
                    for key in ((name, pose, part), (name, pose, ALL)):
                        tally[key][0] += hit
                        tally[key][1] += 1
    parts = sorted({part for _, _, part in tally} - {ALL})
    print("photos with no face found: " + ", ".join(f"{pose} {missed[pose]}" for pose in POSES))
    print(f"probe hits, % ({'model':<40} pose     {ALL:>6}" + "".join(f"{part:>10}" for part in parts) + ")")
    for name in variants:
        for pose in POSES:
            hits, n = tally[name, pose, ALL]
            cells = "".join(f"{100 * tally[name, pose, part][0] / max(tally[name, pose, part][1], 1):>10.1f}" for part in parts)
            print(f"  {name:<48} {pose:<8} {100 * hits / max(n, 1):>6.1f}{cells}")
    if args.json:
        rates = {f"{name}/{pose}/{part}": {"rate": hits / n, "probes": n} for (name, pose, part), (hits, n) in tally.items() if n}
        args.json.write_text(json.dumps({"split": args.split, "photos": len(photos), "no_face": dict(missed), "probe_hits": rates},
                                        indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
