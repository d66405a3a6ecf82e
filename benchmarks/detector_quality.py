"""Face detector quality and speed on real photos: recall by face size, false detections, images/s.

    python benchmarks/detector_quality.py                      # everything: ~15 min on 2 cores
    python benchmarks/detector_quality.py --limit 300          # first 300 Caltech photos
    python benchmarks/detector_quality.py --caltech-only --no-mediapipe

Data (../shared/data/facepool, see its README):
- caltech_webfaces: 2,026 web photos (longest side 480) with eyes, nose and mouth centre of 3,044
  faces, in these pixels (1-based, see CALTECH_ORIGIN). Not every face is annotated (background and crowd faces often are not),
  so "false/photo" there counts unannotated real faces too: an upper bound on false detections.
- scenes_bsds500: 167 scenes. PEOPLE_SCENES lists the ones that show a person (checked by eye on
  every scene: any size, face visible or not; specks on distant boats and squares not counted);
  detections on the other scenes are false.
- dlib_examples: 9 PASCAL VOC group photos with 43 hand-drawn face boxes (imglab XML).

Matching on Caltech: a detection matches an annotated face when its box contains both eyes and the
mouth centre and its width is 1x to 5x the inter-ocular distance (IOD); a face box is about 2-2.5x
IOD frontal, more for heads turned (IOD shrinks), and the containment test needs no assumption
about how tight a detector's box is (BlazeFace's are tighter than MTCNN's). Detections are taken
best score first, each matching the nearest unmatched face it qualifies for. On dlib_examples a
detection matches a box with IoU > 0.4 (the boxes are hand-drawn, not Caltech-style points).
"eye err" is the median, over matched Caltech faces, of the mean distance between detected and
annotated eyes over the IOD.

MTCNN runs once per min_face at the lowest threshold listed; higher thresholds keep the
detections scoring at or above them, which is exactly what a run at that threshold gives (O-Net's
NMS only lets a box suppress lower-scoring ones). images/s is detection time only (photos decoded
beforehand), MTCNN in batches of --batch-size photos, BlazeFace one photo per call as its API
takes them, with its own threads. On a machine busy with other jobs use --threads 1 (two torch
threads spin against the other job: 2.4 photos/s instead of 39 on this 2-core box) and compare
rows of one run only; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from batch_parse.faces import load_detector
from batch_parse.faces.policy import DEFAULT_POLICY

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FACEPOOL = REPO.parent / "shared" / "data" / "facepool"
IOD_BINS = ((0, 10), (10, 20), (20, 40), (40, float("inf")))
BIN_NAMES = ("<10", "10-20", "20-40", ">=40")
MTCNN_THRESHOLDS = (0.7, 0.8, 0.9)
BLAZEFACE_CONFIDENCE = 0.5  # MediaPipe's default
# Caltech's points are 1-based (Matlab): detections on mirrored photos show MTCNN's landmarks
# mirror-symmetric within 0.2 px in 0-based pixel-index coordinates, and the Caltech points sit
# 1.0 px right of and 1.1 px below them at every face size.
CALTECH_ORIGIN = 1.0
# Scenes in scenes_bsds500 showing at least one person (checked by eye on every scene).
PEOPLE_SCENES = frozenset(
    "102062 140006 14092 145014 145059 147062 147077 15062 151087 155060 157055 157087 179084 181079 "
    "185092 188005 188025 189003 189029 198004 198087 206097 216053 216081 226033 23050 23080 238025 "
    "239007 246016 250047 259060 260081 274007 292066 302008 302022 310007 344010 365025 365072 368078 "
    "376020 376043 376086 385039 388067 45077 45096 61060 65019 71099 89072".split()
)

# A detector for the benchmark: RGB photos -> per photo (boxes (K,4) x0 y0 x1 y1, scores (K,),
# eyes (K,2,2) image-left then image-right).
Found = tuple[np.ndarray, np.ndarray, np.ndarray]
DetectFn = Callable[[list[np.ndarray]], list[Found]]


@dataclass
class Tally:
    """What one detector at one threshold scored, summed over the photos seen."""

    found: np.ndarray = field(default_factory=lambda: np.zeros(len(IOD_BINS), int))
    faces: np.ndarray = field(default_factory=lambda: np.zeros(len(IOD_BINS), int))
    eye_errors: list[float] = field(default_factory=list)  # per matched face: mean eye error / IOD
    caltech_false: int = 0
    caltech_photos: int = 0
    scene_dets: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    scene_photos: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    dlib_found: int = 0
    dlib_faces: int = 0
    dlib_extra: int = 0
    seconds: float = 0.0  # detection time over Caltech photos (shared by a run's thresholds)


def read_caltech(facepool: Path, limit: int | None) -> list[tuple[Path, np.ndarray]]:
    """(photo, faces (n,4,2): eye image-left, eye image-right, nose, mouth centre, 0-based) in file order."""
    faces: dict[str, list[np.ndarray]] = {}
    for line in (facepool / "caltech_webfaces" / "faces.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, *values = line.split()
        faces.setdefault(name, []).append(np.array(values, float).reshape(4, 2) - CALTECH_ORIGIN)
    names = sorted(faces)[:limit]
    return [(facepool / "caltech_webfaces" / "images" / name, np.stack(faces[name])) for name in names]


def read_dlib(facepool: Path) -> list[tuple[Path, np.ndarray]]:
    """(photo, boxes (n,4) x0 y0 x1 y1) from dlib's imglab XML files."""
    out = []
    for xml in ("training.xml", "testing.xml"):
        for image in ET.parse(facepool / "dlib_examples" / xml).getroot().iter("image"):
            boxes = [
                [float(b.get("left")), float(b.get("top")), float(b.get("left")) + float(b.get("width")), float(b.get("top")) + float(b.get("height"))]
                for b in image.iter("box")
            ]
            out.append((facepool / "dlib_examples" / image.get("file"), np.array(boxes).reshape(-1, 4)))
    return out


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def match_caltech(boxes: np.ndarray, scores: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, int]:
    """(per annotated face the index of its detection or -1, number of detections matching none)."""
    iod = np.linalg.norm(faces[:, 1] - faces[:, 0], axis=1)
    key_points = faces[:, [0, 1, 3]]  # both eyes and the mouth centre
    centres = key_points.mean(axis=1)
    matched = np.full(len(faces), -1)
    false = 0
    for index in np.argsort(-scores, kind="stable"):
        x0, y0, x1, y1 = boxes[index]
        inside = ((key_points[..., 0] >= x0) & (key_points[..., 0] <= x1) & (key_points[..., 1] >= y0) & (key_points[..., 1] <= y1)).all(axis=1)
        width = x1 - x0
        ok = inside & (width >= iod) & (width <= 5 * iod) & (matched < 0)
        if not ok.any():
            false += 1
            continue
        distance = np.linalg.norm(centres - [(x0 + x1) / 2, (y0 + y1) / 2], axis=1)
        matched[np.flatnonzero(ok)[np.argmin(distance[ok])]] = index
    return matched, false


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of x0 y0 x1 y1 boxes."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=2)
    area = lambda boxes: (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def match_boxes(boxes: np.ndarray, scores: np.ndarray, truth: np.ndarray, threshold: float = 0.4) -> tuple[int, int]:
    """(truth boxes matched, detections matching none), greedy by score, IoU > threshold."""
    overlap = iou(boxes, truth) if len(boxes) and len(truth) else np.zeros((len(boxes), len(truth)))
    taken = np.zeros(len(truth), bool)
    extra = 0
    for index in np.argsort(-scores, kind="stable"):
        candidates = np.where(taken, 0, overlap[index])
        if len(candidates) and candidates.max() > threshold:
            taken[candidates.argmax()] = True
        else:
            extra += 1
    return int(taken.sum()), extra


def mtcnn_detector(min_face: int, threshold: float, pad_retry: bool = True) -> DetectFn:
    detector = load_detector("mtcnn", "cpu")

    def detect(images: list[np.ndarray]) -> list[Found]:
        found = detector.detect(images, min_face=min_face, threshold=threshold, pad_retry=pad_retry)
        return [(d.boxes, d.scores, d.landmarks[:, :2]) for d in found]

    return detect


def blazeface_detector(model_selection: int, confidence: float) -> DetectFn:
    """MediaPipe's BlazeFace; its coordinates are fractions of the image's extent, from edge to edge."""
    import mediapipe as mp  # the teacher's install (scripts/setup-env test); CPU only

    solution = mp.solutions.face_detection.FaceDetection(model_selection=model_selection, min_detection_confidence=confidence)

    def detect(images: list[np.ndarray]) -> list[Found]:
        out = []
        for image in images:
            height, width = image.shape[:2]
            found = solution.process(image).detections or []
            to_pixels = lambda x, y: (x * width - 0.5, y * height - 0.5)  # noqa: E731 - edge fractions to pixel-index
            boxes = []
            for d in found:
                box = d.location_data.relative_bounding_box
                boxes.append([*to_pixels(box.xmin, box.ymin), *to_pixels(box.xmin + box.width, box.ymin + box.height)])
            boxes = np.array(boxes).reshape(-1, 4)
            # Keypoints 0 and 1 are the person's right and left eye: image-left, image-right when upright.
            eyes = np.array([[to_pixels(k.x, k.y) for k in d.location_data.relative_keypoints[:2]] for d in found]).reshape(-1, 2, 2)
            out.append((boxes, np.array([d.score[0] for d in found], float), eyes))
        return out

    return detect


def run(detect: DetectFn, thresholds: tuple[float, ...], caltech, scenes, dlib, batch_size: int) -> dict[float, Tally]:
    """One detector over all the data; results filtered at each threshold (see the docstring)."""
    tallies = {t: Tally() for t in thresholds}

    def batches(items):
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            yield chunk, [read_rgb(item[0] if isinstance(item, tuple) else item) for item in chunk]

    seconds = 0.0
    for chunk, images in batches(caltech):
        start = time.perf_counter()
        results = detect(images)
        seconds += time.perf_counter() - start
        for (_, faces), (boxes, scores, eyes) in zip(chunk, results):
            iod = np.linalg.norm(faces[:, 1] - faces[:, 0], axis=1)
            bins = np.digitize(iod, [b[1] for b in IOD_BINS[:-1]])
            for t, tally in tallies.items():
                keep = scores >= t
                matched, false = match_caltech(boxes[keep], scores[keep], faces)
                np.add.at(tally.faces, bins, 1)
                np.add.at(tally.found, bins, (matched >= 0).astype(int))
                hit = matched >= 0
                errors = np.linalg.norm(eyes[keep][matched[hit]] - faces[hit, :2], axis=2).mean(axis=1) / iod[hit]
                tally.eye_errors.extend(errors.tolist())
                tally.caltech_false += false
                tally.caltech_photos += 1
    for tally in tallies.values():
        tally.seconds = seconds
    for chunk, images in batches(scenes):
        for path, (boxes, scores, _) in zip(chunk, detect(images)):
            people = path.stem in PEOPLE_SCENES
            for t, tally in tallies.items():
                tally.scene_dets[people] += int((scores >= t).sum())
                tally.scene_photos[people] += 1
    for chunk, images in batches(dlib):
        for (_, truth), (boxes, scores, _) in zip(chunk, detect(images)):
            for t, tally in tallies.items():
                keep = scores >= t
                found, extra = match_boxes(boxes[keep], scores[keep], truth)
                tally.dlib_found += found
                tally.dlib_faces += len(truth)
                tally.dlib_extra += extra
    return tallies


def print_header() -> None:
    print(
        f"{'detector':<24}{'thr':>5} | {'recall by IOD px: ' + ' '.join(f'{n:>6}' for n in BIN_NAMES):<46}{'all':>6}"
        f" | {'eye err':>7} | {'false/photo':>11} | {'scenes: no people':>17} {'people':>7} | {'dlib':>9} {'extra':>5} | {'img/s':>6}"
    )


def print_row(name: str, threshold: float, tally: Tally) -> None:
    recall = [f"{f / n:6.3f}" if n else "     -" for f, n in zip(tally.found, tally.faces)]
    overall = tally.found.sum() / max(1, tally.faces.sum())
    rate = lambda k, n: f"{k / n:.3f}" if n else "-"  # noqa: E731
    print(
        f"{name:<24}{threshold:>5.2f} | {'':18}{' '.join(recall):<28}{overall:6.3f}"
        f" | {np.median(tally.eye_errors) if tally.eye_errors else float('nan'):7.3f}"
        f" | {rate(tally.caltech_false, tally.caltech_photos):>11}"
        f" | {rate(tally.scene_dets[False], tally.scene_photos[False]):>17} {rate(tally.scene_dets[True], tally.scene_photos[True]):>7}"
        f" | {tally.dlib_found:>4}/{tally.dlib_faces:<4} {tally.dlib_extra:>5}"
        f" | {tally.caltech_photos / tally.seconds if tally.seconds else 0:6.1f}",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--facepool", type=Path, default=DEFAULT_FACEPOOL, help="the facepool folder (default ../shared/data/facepool)")
    p.add_argument("--limit", type=int, default=None, help="first N Caltech photos (default all 2,026)")
    p.add_argument("--caltech-only", action="store_true", help="skip the scenes and dlib photos")
    p.add_argument("--no-mediapipe", action="store_true", help="skip the BlazeFace comparison")
    p.add_argument("--min-faces", default=f"{DEFAULT_POLICY.min_face},10",
                   help=f"MTCNN min_face values to run (default {DEFAULT_POLICY.min_face},10: the run's default, and 10)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--thresholds", default=",".join(map(str, MTCNN_THRESHOLDS)),
                   help="MTCNN score thresholds to report; the detector runs at the lowest (default %(default)s)")
    p.add_argument("--no-pad-retry", action="store_true",
                   help="no second look inside a black border at photos without a face (see detector.RETRY_BORDER)")
    p.add_argument("--batch-size", type=int, default=16, help="photos per MTCNN call (default 16)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")
    if not (args.facepool / "caltech_webfaces" / "faces.txt").is_file():
        p.error(f"no caltech_webfaces/faces.txt under {args.facepool} (set --facepool)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    caltech = read_caltech(args.facepool, args.limit)
    scenes = [] if args.caltech_only else sorted((args.facepool / "scenes_bsds500").glob("*.jpg"))
    dlib = [] if args.caltech_only else read_dlib(args.facepool)
    print(
        f"{len(caltech)} Caltech photos ({sum(len(f) for _, f in caltech)} faces), {len(scenes)} scenes "
        f"({sum(p.stem in PEOPLE_SCENES for p in scenes)} with people), {len(dlib)} dlib photos; "
        f"torch threads {args.threads}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )
    print_header()
    for min_face in (int(v) for v in args.min_faces.split(",") if v):
        thresholds = tuple(float(v) for v in args.thresholds.split(","))
        tallies = run(mtcnn_detector(min_face, min(thresholds), not args.no_pad_retry), thresholds, caltech, scenes, dlib,
                      args.batch_size)
        for threshold, tally in tallies.items():
            print_row(f"mtcnn min_face={min_face}", threshold, tally)
    if not args.no_mediapipe:
        for selection, name in ((0, "blazeface short"), (1, "blazeface full")):
            try:
                detect = blazeface_detector(selection, BLAZEFACE_CONFIDENCE)
            except Exception as exc:  # noqa: BLE001 - any mediapipe install problem, in one line
                print(f"{name}: skipped, mediapipe cannot start ({type(exc).__name__}: {exc})")
                continue
            tallies = run(detect, (BLAZEFACE_CONFIDENCE,), caltech, scenes, dlib, args.batch_size)
            print_row(name, BLAZEFACE_CONFIDENCE, tallies[BLAZEFACE_CONFIDENCE])
    print(f"load average {os.getloadavg()[0]:.1f} at the end", file=sys.stderr)


if __name__ == "__main__":
    main()
