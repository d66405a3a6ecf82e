"""Face-first parsing vs the v1 path (whole photo + face search) on the same photos, in one run.

    python benchmarks/faces_vs_search.py [--limit 200] [--threads 2] [--sets demo,caltech,cfp,tight]

Sets: the bundled demo photos, the first N `caltech_webfaces` photos (in the wild, several faces),
the first N `cfp` profile photos (turned heads), and N UTKFace tight crops (where `--faces
whole-image` is the right mode). Photos are decoded once up front; each is then processed alone
(batch of one) by each path, including the encoding of its outputs (PNG label map, JPEG crops),
so per-photo times can be split by whether v1 searched on that photo.

The v1 path is the code of commit V1_COMMIT (the last one with the face search), extracted with
`git archive` into a temporary folder and run in a subprocess on the same photo list with the same
thread count: nothing of it is kept in the package. Prints one table per set and the ratios the
face-first issue targets (faces/s where v1 searched >= 2x; whole-image on tight crops >= 0.8x).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
V1_COMMIT = "aa76fbd"

# Run inside the extracted v1 tree: per photo, seconds for parse + encode, and whether it searched.
V1_SCRIPT = r"""
import io, json, sys, time, dataclasses
import numpy as np, torch
from PIL import Image
from batch_parse.model import load_parser
from batch_parse.model.parser import mean_confidence
from batch_parse.pipeline.decode import decode_image
from batch_parse.pipeline.stages import part_crop
torch.set_num_threads(int(sys.argv[2]))
paths = json.load(open(sys.argv[1]))
parser = load_parser("stn-icnn/default", device="cpu")
first = dataclasses.replace(parser.cfg, search_below=0.0)
def encode(image, r):
    buf = io.BytesIO(); Image.fromarray(r.label_map).save(buf, format="PNG", compress_level=1)
    for box in r.boxes:
        crop = part_crop(image, box)
        if crop.size:
            Image.fromarray(crop).save(io.BytesIO(), format="JPEG", quality=90)
out = {}
for name, files in paths.items():
    images = [decode_image(open(f, "rb").read(), 50_000_000) for f in files]
    parser.parse(images[:1])  # warm-up
    rows = []
    for image in images:
        cfg, parser.cfg = parser.cfg, first
        searched = mean_confidence(parser.parse([image])[0]) < cfg.search_below
        parser.cfg = cfg
        t = time.process_time(); r = parser.parse([image])[0]; encode(image, r)
        rows.append((time.process_time() - t, bool(searched)))
    out[name] = rows
print(json.dumps(out))
"""


def photo_sets(limit: int, wanted: list[str]) -> dict[str, list[str]]:
    from corpus import shared_dir, utkface_dir

    pool = shared_dir() / "data" / "facepool"
    sets = {
        "demo": sorted(str(p) for p in (ROOT / "batch_parse" / "demo" / "images").glob("*.jpg")),
        "caltech": sorted(str(p) for p in (pool / "caltech_webfaces" / "images").glob("*.jpg"))[:limit],
        "cfp": sorted(str(p) for p in (pool / "cfp" / "images").glob("*/profile/*.jpg"))[:limit],
        "tight": sorted(str(p) for p in utkface_dir().glob("*.jpg"))[:limit],
    }
    return {k: v for k, v in sets.items() if k in wanted}


def run_v1(sets: dict[str, list[str]], threads: int) -> dict[str, list[tuple[float, bool]]]:
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", V1_COMMIT, "batch_parse"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        listing = Path(tmp) / "paths.json"
        listing.write_text(json.dumps(sets))
        env = {**os.environ, "PYTHONPATH": tmp}
        done = subprocess.run([sys.executable, "-c", V1_SCRIPT, str(listing), str(threads)], cwd=tmp, env=env,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"v1 run failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def run_face_first(sets: dict[str, list[str]], threads: int) -> dict[str, list[dict]]:
    import torch
    from PIL import Image

    from batch_parse.faces import load_detector
    from batch_parse.model import load_parser
    from batch_parse.pipeline.decode import decode_image

    torch.set_num_threads(threads)
    detector, parser = load_detector("mtcnn", device="cpu"), load_parser("stn-icnn/default", device="cpu")
    out = {}
    for name, files in sets.items():
        whole = name == "tight"  # aligned crops: the mode a user would pick for them
        images = [decode_image(Path(f).read_bytes(), 50_000_000) for f in files]
        parser.parse_faces(images[:1], None if whole else detector.detect(images[:1]))  # warm-up
        rows = []
        for image in images:
            phases: dict[str, float] = {}
            cpu = time.process_time()
            t = time.perf_counter()
            found = None if whole else detector.detect([image])
            phases["detect"] = time.perf_counter() - t
            results = parser.parse_faces([image], found, timings=phases)
            t = time.perf_counter()
            for r in results:
                Image.fromarray(r.label_map).save(io.BytesIO(), format="PNG", compress_level=1)
                for p in range(len(r.boxes)):
                    crop = r.part_crop(p)
                    if crop.size:
                        Image.fromarray(crop).save(io.BytesIO(), format="JPEG", quality=90)
            phases["encode"] = time.perf_counter() - t
            rows.append({"seconds": time.process_time() - cpu, "faces": len(results), **phases})
        out[name] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sets", default="demo,caltech,cfp,tight")
    parser.add_argument("--json", help="Also write the per-photo figures here.")
    args = parser.parse_args()
    sets = photo_sets(args.limit, args.sets.split(","))
    # Set by set, v1 then face-first: on a shared machine the load drifts over minutes, and a
    # ratio is only fair between runs made close together.
    v1, new = {}, {}
    for name, files in sets.items():
        v1.update(run_v1({name: files}, args.threads))
        new.update(run_face_first({name: files}, args.threads))
    print(f"threads {args.threads}; per photo, batch of one, decode excluded, encode included; rates are per "
          f"CPU-second of the process (time.process_time), so that other work on the machine does not skew them; "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    header = f"{'set':<8} {'photos':>6} {'v1 img/s':>9} {'v1 searched':>11} {'new img/s':>10} {'new faces':>9} {'new faces/s':>11}"
    print(header)
    for name in sets:
        old_s = sum(t for t, _ in v1[name])
        new_s = sum(r["seconds"] for r in new[name])
        faces = sum(r["faces"] for r in new[name])
        searched = sum(s for _, s in v1[name])
        print(f"{name:<8} {len(v1[name]):>6} {len(v1[name]) / old_s:>9.2f} {searched:>11} {len(new[name]) / new_s:>10.2f} "
              f"{faces:>9} {faces / new_s:>11.2f}")
    print("\nwhere the face-first time goes (share of its wall time per set):")
    for name in sets:
        total = sum(sum(r.get(k, 0.0) for k in ("detect", "align", "parse", "map_back", "encode")) for r in new[name])
        shares = {k: sum(r.get(k, 0.0) for r in new[name]) / total for k in ("detect", "align", "parse", "map_back", "encode")}
        print(f"  {name:<8} " + "  ".join(f"{k} {100 * v:4.1f}%" for k, v in shares.items()))
    print("\nratios (face-first / v1):")
    for name in sets:
        if name == "tight":
            ratio = (len(new[name]) / sum(r["seconds"] for r in new[name])) / (len(v1[name]) / sum(t for t, _ in v1[name]))
            print(f"  tight crops, --faces whole-image vs v1, images/s: {ratio:.2f}x (target >= 0.8x)")
            continue
        idx = [i for i, (_, s) in enumerate(v1[name]) if s]
        if not idx:
            print(f"  {name}: v1 searched on no photo")
            continue
        old_faces_s = len(idx) / sum(v1[name][i][0] for i in idx)  # v1 gives one face per photo
        new_faces_s = sum(new[name][i]["faces"] for i in idx) / sum(new[name][i]["seconds"] for i in idx)
        new_img_s = len(idx) / sum(new[name][i]["seconds"] for i in idx)
        print(f"  {name}: on the {len(idx)} photos where v1 searched: faces/s {new_faces_s / old_faces_s:.2f}x "
              f"(target >= 2x), images/s {new_img_s / old_faces_s:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"v1": v1, "face_first": new}))


if __name__ == "__main__":
    main()
