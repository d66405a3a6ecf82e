"""Training and test faces from real photos, cut exactly as inference cuts them, labelled by the teacher.

Every photo of the face pool (../shared/data/facepool: CFP frontal and profile portraits,
Caltech web photos with several faces, CUHK, RMFD, expressions, a WIDER sample) and, when
given, UTKFace goes through the product's own face stage: MTCNN detection, then alignment into
the canonical frame (batch_parse.faces). Each aligned face is then:

- labelled by the teacher (MediaPipe face mesh polygons, batch_parse.train.teacher), and the
  teacher is asked again on the mirror image: a face whose two labellings disagree
  (flip agreement below FLIP_KEEP) is one the mesh is guessing on, typically a turned head;
- given a pose from its landmarks (yaw proxy, `pose_bucket`);
- given the human points of its photo where the data set has them, mapped into the frame as
  probes: Caltech's eye centres, nose and mouth centre; CFP's 30 fiducials reduced to one
  point per part (layout read off plotted samples, see CFP_PROBES).

Output (Helen layout, which batch_parse.train.datasets and `batch-parse train` read):
  images/NAME.jpg                  the aligned face (every face kept, labelled or not)
  labels/NAME/NAME_lblXX.png       the teacher's labels, where it gave some
  exemplars.txt / tuning.txt / testing.txt
                                   train / val / test faces with clean teacher labels (flip
                                   agreement >= FLIP_KEEP); split by a hash of the photo's
                                   person (CFP) or photo name, so no person or photo is on two sides
  faces.jsonl                      one record per detected face: every field of FaceRecord
  summary.json                     counts per source and pose bucket (printed too)

Usage: python -m batch_parse.train.facepool POOL DST [--utkface DIR] [--limit N] [--workers N]
       python -m batch_parse.train.facepool --report DST    (what the teacher did, per pose)
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from batch_parse.labels import HELEN_TO_CLASS, MIRROR_CLASS, NUM_PART_CLASSES
from batch_parse.train import teacher
from batch_parse.train.datasets import HELEN_SPLIT_FILES, hash_split
from batch_parse.train.facerecord import POSES, FaceRecord, pose_bucket, read_records

# One-face sources: the largest detection is the subject (others are bystanders or posters).
# Multi-face sources: every detection is kept.
SOURCES: dict[str, tuple[str, bool]] = {  # name -> (glob under the pool root, one face per photo)
    "cfp": ("cfp/images/*/*/*.jpg", True),
    "caltech": ("caltech_webfaces/images/*.jpg", False),
    "cuhk": ("cuhk/*.jpg", True),
    "rmfd": ("rmfd/*.jpg", True),
    "expressions": ("expressions/*.jpg", True),
    "wider": ("wider_sample/*.jpg", False),
}
UTKFACE = "utkface"

PARTIAL = "faces.partial.jsonl"  # the build's journal: one line per photo done, removed when the build ends
# Faces whose frame would be smaller than this (photo pixels) are too small for the teacher to
# label; they are recorded (and probed) but not written.
MIN_FRAME = 48
# Class-exact agreement (Dice over face parts) between the teacher on a face and on its mirror
# image, below which its labels are not trusted for training or scoring.
FLIP_KEEP = 0.80

# Caltech's points are 1-based (the data set's Matlab convention); ours are 0-based pixel indices.
CALTECH_ORIGIN = 1.0
# CFP's 30 fiducials, read off plotted frontal and profile samples: 0-8 jaw line, 9-11 brow
# (outer end, middle, inner end), 12-17 the eye's contour, 18-21 nose ridge down to the tip,
# 22-24 under the nose, 25 mouth corner, 26/27 top and bottom edge of the upper lip, 29/28 top
# and bottom edge of the lower lip. Only the visible half of the face is annotated. Each probe
# (an F1 group of batch_parse.labels) is a mean of points that lies inside its part:
CFP_PROBES: dict[str, tuple[int, ...]] = {
    "brows": (10,),
    "eyes": (12, 13, 14, 15, 16, 17),
    "nose": (21, 22, 23, 24),
    "upper_lip": (26, 27),
    "lower_lip": (28, 29),
}
# Caltech: left eye, right eye, nose, mouth centre (which may be on either lip or between them).
CALTECH_PROBES = ("eyes", "eyes", "nose", "mouth")

_MIRROR_CLASS = np.asarray(MIRROR_CLASS, np.uint8)
_HELEN_TO_CLASS = np.asarray(HELEN_TO_CLASS, np.uint8)


@dataclass
class Photo:
    source: str
    path: str  # relative to its source root
    group: str  # what the split hashes: person (CFP) or photo
    probes: list[list[tuple[str, list[float]]]] = field(default_factory=list)  # per annotated face: (part, [x, y])


def yaw_proxy(landmarks: np.ndarray) -> float:
    """How far the nose tip sits from the eyes' midline, in eye distances (0 frontal; sign = side).

    From the detector's 5 points in the aligned frame (eyes level there): a turned head brings the
    eyes together and pushes the nose out, so the ratio grows fast towards profile.
    """
    eye_l, eye_r, nose = landmarks[0], landmarks[1], landmarks[2]
    span = max(abs(eye_r[0] - eye_l[0]), 1e-3)
    return float((nose[0] - (eye_l[0] + eye_r[0]) / 2) / span)


def to_classes(helen_map: np.ndarray) -> np.ndarray:
    return _HELEN_TO_CLASS[helen_map]


def mirror_labels(labels: np.ndarray) -> np.ndarray:
    """The label map of the mirrored image: columns reversed, sides swapped."""
    return _MIRROR_CLASS[labels[:, ::-1]]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Class-exact Dice over face parts (classes 1-8) of two label maps: 1 = identical, 0 = disjoint.

    Skin is left out: the check is about where the parts are (and skin, where present, fills what
    they leave, so it would only dilute the score), and it stays the check v2's data was built with."""
    a, b = _parts_only(a), _parts_only(b)
    fg = (a > 0).sum() + (b > 0).sum()
    return float(2 * ((a == b) & (a > 0)).sum() / fg) if fg else 1.0


def _parts_only(labels: np.ndarray) -> np.ndarray:
    return np.where(labels < NUM_PART_CLASSES, labels, 0)


def caltech_probes(root: Path) -> dict[str, list[list[tuple[str, list[float]]]]]:
    """Photo file -> per annotated face: [(part, [x, y]) x 4], 0-based photo pixels."""
    faces: dict[str, list] = {}
    for line in (root / "caltech_webfaces" / "faces.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, *values = line.split()
        points = np.array(values, np.float64).reshape(4, 2) - CALTECH_ORIGIN
        faces.setdefault(name, []).append([(part, p.tolist()) for part, p in zip(CALTECH_PROBES, points)])
    return faces


def cfp_probes(fiducial_file: Path) -> list[tuple[str, list[float]]]:
    points = np.loadtxt(fiducial_file, dtype=np.float64).reshape(-1, 2)
    return [(part, points[list(idx)].mean(0).tolist()) for part, idx in CFP_PROBES.items()]


def list_photos(pool: Path, utkface: Path | None = None, limit: int | None = None) -> list[Photo]:
    """Every photo to process, sources in SOURCES order, sorted within; `limit` per source."""
    if not pool.is_dir():
        raise ValueError(f"face pool folder not found: {pool}")
    photos: list[Photo] = []
    caltech = caltech_probes(pool) if (pool / "caltech_webfaces" / "faces.txt").is_file() else {}
    for source, (pattern, _) in SOURCES.items():
        paths = sorted(pool.glob(pattern))[:limit]
        for path in paths:
            rel = str(path.relative_to(pool))
            if source == "cfp":  # cfp/images/PERSON/{frontal,profile}/NN.jpg
                person = path.parts[-3]
                fid = pool / "cfp" / "fiducials" / person / path.parts[-2] / f"{path.stem}.txt"
                photos.append(Photo(source, rel, f"cfp-{person}", [cfp_probes(fid)] if fid.is_file() else []))
            else:
                photos.append(Photo(source, rel, f"{source}-{path.stem}", caltech.get(path.name, []) if source == "caltech" else []))
    if utkface is not None:
        if not utkface.is_dir():
            raise ValueError(f"UTKFace folder not found: {utkface}")
        for path in sorted(p for p in utkface.iterdir() if p.suffix == ".jpg")[:limit]:
            # Split by the bare name, as the teacher's UTKFace folder (and stn-icnn/v1) did: v1's
            # training crops stay in train here, so v1 is never scored on faces it learned from.
            photos.append(Photo(UTKFACE, str(path), path.name.split(".")[0]))
    return photos


def _face_name(photo: Photo, k: int) -> str:
    stem = Path(photo.path).with_suffix("").as_posix()
    if photo.source == "cfp":  # cfp/images/219/profile/01 -> 219-profile-01
        stem = "-".join(Path(stem).parts[-3:])
    else:
        stem = Path(stem).name.split(".")[0]
    return f"{photo.source}-{stem}-{k}"


def _match_probes(photo: Photo, boxes: np.ndarray, landmarks: np.ndarray) -> dict[int, list]:
    """Detection index -> the annotated face whose eyes are nearest its eyes (both inside its box)."""
    matched: dict[int, list] = {}
    for face in photo.probes:
        eyes = np.array([p for part, p in face if part == "eyes"])
        best, best_d = None, np.inf
        for k, (box, pts) in enumerate(zip(boxes, landmarks)):
            inside = ((eyes >= box[:2]) & (eyes <= box[2:])).all()
            d = np.linalg.norm(eyes.mean(0) - pts[:2].mean(0))
            if inside and d < best_d and k not in matched:
                best, best_d = k, d
        if best is not None:
            matched[best] = face
    return matched


_detector = None
_roots: dict[str, Path] = {}


def _start_worker(pool: str, dst: str) -> None:
    global _detector
    torch.set_num_threads(1)  # one process per core: threads would only fight
    from batch_parse.faces import load_detector

    _detector = load_detector("mtcnn", device="cpu")
    teacher.start_mesh()
    _roots.update(pool=Path(pool), dst=Path(dst))


def process_photo(photo: Photo) -> tuple[str, list[FaceRecord], int, str | None]:
    """Detects, aligns, labels and writes one photo's faces: (photo path, records, annotated faces missed, error)."""
    return (photo.path, *_process_photo(photo))


def _process_photo(photo: Photo) -> tuple[list[FaceRecord], int, str | None]:
    from batch_parse.faces import align

    src = Path(photo.path) if photo.source == UTKFACE else _roots["pool"] / photo.path
    try:
        with Image.open(io.BytesIO(src.read_bytes())) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        return [], len(photo.probes), f"{photo.path}: {exc}"
    found = _detector.detect([rgb])[0]
    one_face = photo.source == UTKFACE or SOURCES[photo.source][1]
    count = min(1, len(found.scores)) if one_face else len(found.scores)
    matched = _match_probes(photo, found.boxes[:count], found.landmarks[:count])
    # One-face photos carry their subject's points; a detection that is not it has none.
    records = []
    tensor = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)  # a writable copy: PIL arrays are read-only
    for k in range(count):
        points = found.landmarks[k].astype(np.float64)
        alignment = align.fit(points)
        frame_points = alignment.to_frame(points)
        yaw = yaw_proxy(frame_points)
        name = _face_name(photo, k)
        probes = [(part, alignment.to_frame(np.array(p)).tolist()) for part, p in matched.get(k, [])]
        written = alignment.width / alignment.scale >= MIN_FRAME  # the face frame's side in photo pixels
        status, flip, clean = "skipped", None, False
        if written:
            frame = align.warp(tensor, alignment).permute(1, 2, 0).numpy()
            mesh = teacher.mesh_rgb(frame)
            helen = None if mesh is None else teacher.labels_from_mesh(mesh, *frame.shape[:2])
            if mesh is not None:
                # Kept for pose synthesis (train/pool.py): the 3-D mesh rotates, its labels come along.
                np.save(_roots["dst"] / "mesh" / f"{name}.npy", mesh.astype(np.float32))
            if helen is None:
                status = "no_face"
            else:
                status = "ok"
                mirrored = teacher.label_rgb(frame[:, ::-1])
                flip = agreement(to_classes(helen), mirror_labels(to_classes(mirrored))) if mirrored is not None else 0.0
                clean = flip >= FLIP_KEEP
            teacher.write_sample(_roots["dst"], name, frame, helen)
        records.append(FaceRecord(
            name=name, source=photo.source, photo=photo.path, split=hash_split(photo.group), face_index=k,
            box=found.boxes[k].tolist(), score=float(found.scores[k]), landmarks=frame_points.tolist(),
            matrix=alignment.matrix.tolist(), side=alignment.width, yaw=yaw, pose=pose_bucket(yaw),
            written=written, teacher=status, flip_agreement=flip, clean=clean, probes=probes,
        ))
    return records, len(photo.probes) - len(matched), None


def summarise(records: list[FaceRecord]) -> dict[str, dict[str, dict[str, int]]]:
    """source -> pose -> counts: faces, written, teacher labelled, teacher missed, clean, dropped."""
    table: dict[str, dict[str, Counter]] = {}
    for r in records:
        for source in (r.source, "all"):
            c = table.setdefault(source, {}).setdefault(r.pose, Counter())
            c["faces"] += 1
            c["written"] += r.written
            c["teacher_ok"] += r.teacher == "ok"
            c["teacher_no_face"] += r.teacher == "no_face"
            c["clean"] += r.clean
            c["flip_dropped"] += r.teacher == "ok" and not r.clean
    return {s: {p: dict(c) for p, c in sorted(poses.items(), key=lambda kv: POSES.index(kv[0]))} for s, poses in table.items()}


def format_summary(summary: dict) -> str:
    cols = ("faces", "written", "teacher_ok", "teacher_no_face", "flip_dropped", "clean")
    lines = [f"{'source':12} {'pose':8} " + " ".join(f"{c:>15}" for c in cols)]
    for source, poses in summary.items():
        for pose, c in poses.items():
            lines.append(f"{source:12} {pose:8} " + " ".join(f"{c.get(k, 0):>15}" for k in cols))
    return "\n".join(lines)


def build(pool: str | Path, dst: str | Path, utkface: str | Path | None = None, limit: int | None = None,
          workers: int = 2) -> dict:
    pool, dst = Path(pool), Path(dst)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    photos = list_photos(pool, Path(utkface) if utkface else None, limit)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(parents=True, exist_ok=True)
    (dst / "mesh").mkdir(parents=True, exist_ok=True)
    records: list[FaceRecord] = []
    missed_probed, errors = 0, []
    # Every photo's result is appended to a journal as it lands, so a build that is stopped (an
    # hour of work on a small CPU) resumes where it was instead of starting over.
    journal = dst / PARTIAL
    done: set[str] = set()
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the line a kill cut short: that photo is redone
                continue
            done.add(entry["photo"])
            records += [FaceRecord(**r) for r in entry["records"]]
            missed_probed += entry["missed"]
            errors += [entry["error"]] if entry["error"] else []
        print(f"facepool: resuming, {len(done)} of {len(photos)} photos already done", file=sys.stderr, flush=True)
    todo = [p for p in photos if p.path not in done]
    # Fail fast here: a worker whose initializer raises is respawned by Pool forever.
    try:
        _start_worker(str(pool), str(dst))
    except Exception as exc:  # noqa: BLE001 - a missing detector or mesh install, reported in one line
        raise RuntimeError(f"the face stage or the teacher cannot start ({type(exc).__name__}: {exc}); see scripts/setup-env") from None
    start = last = time.monotonic()
    with Pool(workers, initializer=_start_worker, initargs=(str(pool), str(dst))) as workers_pool, open(journal, "a") as log:
        for i, (photo, recs, missed, error) in enumerate(workers_pool.imap_unordered(process_photo, todo, chunksize=4), 1):
            records += recs
            missed_probed += missed
            if error:
                errors.append(error)
            log.write(json.dumps({"photo": photo, "records": [asdict(r) for r in recs], "missed": missed, "error": error}) + "\n")
            log.flush()
            now = time.monotonic()
            if now - last > 15 or i == len(todo):
                last = now
                print(f"facepool: {len(done) + i}/{len(photos)} photos, {len(records)} faces, {i / (now - start):.1f} photos/s",
                      file=sys.stderr, flush=True)
    summary = write_index(dst, records, {"photos": len(photos), "unreadable": errors,
                                         "annotated_faces_missed_by_detector": missed_probed})
    journal.unlink()
    return summary


def write_index(dst: Path, records: list[FaceRecord], counts: dict) -> dict:
    """faces.jsonl, the three split files (clean faces only) and summary.json (counts + the table)."""
    records = sorted(records, key=lambda r: r.name)
    with open(dst / "faces.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")
    for split, file_name in HELEN_SPLIT_FILES.items():
        names = [r.name for r in records if r.clean and r.split == split]
        (dst / file_name).write_text("".join(f"{n}\n" for n in names))
    summary = {**counts, "by_source_and_pose": summarise(records)}
    (dst / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def report(dst: str | Path) -> str:
    """What the teacher does on real faces: the counts table, the pose buckets checked against CFP's
    frontal / profile folders, and the teacher's probe hits on clean, flip-dropped and unlabelled faces."""
    from batch_parse.train.probes import probe_hits, read_teacher

    dst = Path(dst)
    records = read_records(dst)
    lines = [format_summary(summarise(records)), "", "pose buckets on CFP (by folder):"]
    for view in ("frontal", "profile"):
        yaws = np.abs([r.yaw for r in records if r.source == "cfp" and f"/{view}/" in r.photo])
        if len(yaws):
            buckets = Counter(pose_bucket(y) for y in yaws)
            lines.append(f"  {view:8} {len(yaws)} faces, |yaw| p10/p50/p90 = "
                         + "/".join(f"{q:.2f}" for q in np.percentile(yaws, [10, 50, 90]))
                         + "; buckets " + ", ".join(f"{p} {buckets[p]}" for p in POSES))
    lines += ["", "teacher probe hits (all splits), % (probes):"]
    tally: dict[tuple[str, str], list[int]] = {}
    for r in records:
        if not r.probes or not r.written:
            continue
        kind = "clean" if r.clean else "flip-dropped" if r.teacher == "ok" else "no labels"
        hits = probe_hits(read_teacher(dst, r.name) if r.teacher == "ok" else None, r.probes)
        for key in ((r.pose, kind), ("all", kind)):
            t = tally.setdefault(key, [0, 0])
            t[0] += sum(h for _, h in hits)
            t[1] += len(hits)
    for pose in (*POSES, "all"):
        cells = [f"{kind} {100 * t[0] / t[1]:.1f} ({t[1]})" for kind in ("clean", "flip-dropped", "no labels")
                 if (t := tally.get((pose, kind))) and t[1]]
        lines.append(f"  {pose:8} " + ", ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--report"] and len(argv) == 2:
        try:
            print(report(argv[1]))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    parser = argparse.ArgumentParser(prog="python -m batch_parse.train.facepool", description=__doc__.splitlines()[0])
    parser.add_argument("pool", help="the face pool folder (../shared/data/facepool)")
    parser.add_argument("dst", help="output folder (Helen layout + faces.jsonl)")
    parser.add_argument("--utkface", default=None, help="also take every UTKFace crop in this folder")
    parser.add_argument("--limit", type=int, default=None, help="first N photos of each source (sorted)")
    parser.add_argument("--workers", type=int, default=2, help="processes, each with its own detector and mesh")
    args = parser.parse_args(argv)
    try:
        summary = build(args.pool, args.dst, args.utkface, args.limit, args.workers)
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary["by_source_and_pose"]))
    print(f"annotated faces the detector missed: {summary['annotated_faces_missed_by_detector']}; "
          f"unreadable photos: {len(summary['unreadable'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
