"""Pseudo-labels face photos with MediaPipe face mesh and writes them in Helen's folder layout.

The mesh's 478 landmarks become filled polygons (drawn 4x supersampled, then reduced by
majority vote per pixel, for smooth edges): brows, eyes, nose, upper lip, inner mouth, lower
lip, and the face oval as Helen's face_skin. Draw order lets smaller parts win: face skin,
nose, brows, eyes, lips, inner mouth last.

Sides: brow_1/eye_1 (Helen's left_brow/left_eye) are the polygons whose centroid has the
smaller x in the image, whatever MediaPipe calls them. MediaPipe's LEFT/RIGHT names follow the
subject, and a mirrored or turned face would swap them; the image-side rule is the one Helen
and batch_parse.labels use.

Output (SmithCVPR2013_dataset_resized layout, which batch_parse.train.datasets reads):
  images/NAME.jpg                  the source bytes (re-encoded only if the source is not JPEG)
  labels/NAME/NAME_lbl00..10.png   one 0/255 mask per entry of labels.HELEN_LABELS (hair empty)
  exemplars.txt / tuning.txt / testing.txt   train / val / test names, split by sha1(NAME)

Usage: python -m batch_parse.train.teacher SRC DST [--limit N] [--workers N]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from batch_parse.labels import HELEN_LABELS
from batch_parse.train.datasets import HELEN_SPLIT_FILES, hash_split

# MediaPipe's C++ side logs a few warnings per process start; they bury the progress lines.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SUPERSAMPLE = 4

# Helen label indices, looked up by name so HELEN_LABELS stays the only list.
_H = {name: i for i, name in enumerate(HELEN_LABELS)}

# Lip contours of FACEMESH_LIPS, split at the mouth corners (61/291 outer, 78/308 inner),
# each running from the image-left corner to the image-right corner of a frontal face.
LIP_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIP_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIP_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIP_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)

# Nose outline like Helen's nose label: from the bridge between the eyes (168), down the
# sides of the bridge, around the alae, under the nostrils through the subnasale (2), and
# back up the other side. Picked by eye on numbered-landmark renders.
NOSE_OUTLINE = (
    168, 417, 351, 412, 399, 437, 420, 279, 358, 294, 327, 326,
    2,
    97, 98, 64, 129, 49, 198, 217, 174, 188, 122, 193,
)  # fmt: skip


def _chains(edges: frozenset[tuple[int, int]]) -> list[list[int]]:
    """Orders an undirected edge set into its polylines and cycles (landmark indices)."""
    neighbours: dict[int, list[int]] = defaultdict(list)
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    ends = sorted(n for n, ns in neighbours.items() if len(ns) == 1)
    seen: set[int] = set()
    chains = []
    # Open polylines must start at an end, so ends go first; what is left are cycles.
    for start in ends + sorted(neighbours):
        if start in seen:
            continue
        chain = [start]
        seen.add(start)
        while nxt := [n for n in neighbours[chain[-1]] if n not in seen]:
            chain.append(nxt[0])
            seen.add(nxt[0])
        chains.append(chain)
    return chains


def _mesh_topology() -> dict[str, list[list[int]]]:
    from mediapipe.python.solutions import face_mesh_connections as fmc

    topology = {
        "brow_a": _chains(fmc.FACEMESH_LEFT_EYEBROW),
        "brow_b": _chains(fmc.FACEMESH_RIGHT_EYEBROW),
        "eye_a": _chains(fmc.FACEMESH_LEFT_EYE),
        "eye_b": _chains(fmc.FACEMESH_RIGHT_EYE),
        "oval": _chains(fmc.FACEMESH_FACE_OVAL),
    }
    # A brow is two polylines (upper and lower edge); an eye and the oval are one cycle.
    shapes = {k: len(v) for k, v in topology.items()}
    if shapes != {"brow_a": 2, "brow_b": 2, "eye_a": 1, "eye_b": 1, "oval": 1}:
        raise RuntimeError(f"unexpected MediaPipe face-mesh topology: {shapes}")
    return topology


def _band(points: np.ndarray, upper: list[int] | tuple[int, ...], lower: list[int] | tuple[int, ...]) -> np.ndarray:
    """The closed polygon between two polylines: one edge out, the other edge back."""
    a, b = points[list(upper)], points[list(lower)]
    # Walk back along `lower` from the end nearest `upper`'s last point, whatever way it was listed.
    if np.linalg.norm(a[-1] - b[-1]) > np.linalg.norm(a[-1] - b[0]):
        b = b[::-1]
    return np.concatenate([a, b[::-1]])


def part_polygons(points: np.ndarray, topology: dict[str, list[list[int]]]) -> list[tuple[int, np.ndarray]]:
    """(Helen label index, polygon in pixels) for every part, in draw order (later wins)."""
    brows = [_band(points, *topology[k]) for k in ("brow_a", "brow_b")]
    eyes = [points[topology[k][0]] for k in ("eye_a", "eye_b")]
    brows.sort(key=lambda p: p[:, 0].mean())
    eyes.sort(key=lambda p: p[:, 0].mean())
    return [
        (_H["face_skin"], points[topology["oval"][0]]),
        (_H["nose"], points[list(NOSE_OUTLINE)]),
        (_H["left_brow"], brows[0]),
        (_H["right_brow"], brows[1]),
        (_H["left_eye"], eyes[0]),
        (_H["right_eye"], eyes[1]),
        (_H["upper_lip"], _band(points, LIP_OUTER_UPPER, LIP_INNER_UPPER)),
        (_H["lower_lip"], _band(points, LIP_OUTER_LOWER, LIP_INNER_LOWER)),
        (_H["inner_mouth"], _band(points, LIP_INNER_UPPER, LIP_INNER_LOWER)),
    ]


def helen_label_map(points: np.ndarray, height: int, width: int, topology: dict[str, list[list[int]]]) -> np.ndarray:
    """(H, W) uint8 map of Helen label indices from landmarks in pixel coordinates."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (width * s, height * s), _H["background"])
    draw = ImageDraw.Draw(canvas)
    for label, polygon in part_polygons(points, topology):
        # Landmark coordinates are continuous (pixel i spans [i, i+1)); PIL fills by pixel centre.
        draw.polygon([tuple(p) for p in (polygon * s - 0.5)], fill=label)
    fine = np.asarray(canvas).reshape(height, s, width, s)
    votes = np.stack([(fine == label).sum(axis=(1, 3)) for label in range(len(HELEN_LABELS))])
    return votes.argmax(axis=0).astype(np.uint8)


def _image_name(path: Path) -> str:
    # UTKFace names end in ".jpg.chip.jpg"; Helen names have no dots.
    return path.name.split(".")[0]


_mesh = None
_topology: dict[str, list[list[int]]] = {}


def start_mesh() -> None:
    """Starts this process's face mesh (once per process: it holds a TFLite interpreter)."""
    global _mesh, _topology
    import mediapipe as mp

    _mesh = mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5
    )
    _topology = _mesh_topology()


def mesh_rgb(rgb: np.ndarray) -> np.ndarray | None:
    """(478, 3) mesh of the face in an RGB uint8 image, in pixels (x, y; z on x's scale, MediaPipe's
    relative depth, smaller = nearer the camera), or None if the mesh finds no face.

    Needs the mesh started in this process (start_mesh)."""
    result = _mesh.process(np.ascontiguousarray(rgb))
    if not result.multi_face_landmarks:
        return None
    height, width = rgb.shape[:2]
    landmarks = result.multi_face_landmarks[0].landmark
    return np.array([(p.x * width, p.y * height, p.z * width) for p in landmarks], dtype=np.float64)


def label_rgb(rgb: np.ndarray) -> np.ndarray | None:
    """(H, W) Helen label map of the face in an RGB uint8 image, or None if the mesh finds no face."""
    points = mesh_rgb(rgb)
    return None if points is None else labels_from_mesh(points, *rgb.shape[:2])


def labels_from_mesh(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) Helen label map drawn from a mesh's x, y (pixels)."""
    return helen_label_map(points[:, :2], height, width, _topology or _mesh_topology())


def write_sample(dst: Path, name: str, image: bytes | np.ndarray, helen_map: np.ndarray | None) -> None:
    """images/NAME.jpg (JPEG bytes as given, or an RGB array encoded at q95) and, when labelled,
    labels/NAME/NAME_lblXX.png: one 0/255 mask per Helen label."""
    image_path = dst / "images" / f"{name}.jpg"
    if isinstance(image, bytes):
        image_path.write_bytes(image)
    else:
        Image.fromarray(image).save(image_path, quality=95)
    if helen_map is None:
        return
    label_dir = dst / "labels" / name
    label_dir.mkdir(parents=True, exist_ok=True)
    for index in range(len(HELEN_LABELS)):
        mask = np.where(helen_map == index, 255, 0).astype(np.uint8)
        Image.fromarray(mask).save(label_dir / f"{name}_lbl{index:02d}.png")


def _label_one(job: tuple[Path, Path]) -> tuple[str, str]:
    """Labels one image into dst; returns (name, split or 'no_face' or 'unreadable')."""
    src, dst = job
    name = _image_name(src)
    data = src.read_bytes()
    try:
        image = Image.open(io.BytesIO(data))
        image_format = image.format
        rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return name, "unreadable"
    label_map = label_rgb(rgb)
    if label_map is None:
        return name, "no_face"
    write_sample(dst, name, data if image_format == "JPEG" else rgb, label_map)
    return name, hash_split(name)


def pseudo_label(src_dir: str | Path, dst_dir: str | Path, limit: int | None = None, workers: int = 2) -> dict[str, int]:
    """Labels every image in src_dir (sorted, first `limit`) into dst_dir; returns counts."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if not src_dir.is_dir():
        raise ValueError(f"source folder not found: {src_dir}")
    sources = sorted(p for p in src_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if limit is not None:
        sources = sources[:limit]
    names = [_image_name(p) for p in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"two source files in {src_dir} map to the same image name")
    (dst_dir / "images").mkdir(parents=True, exist_ok=True)
    (dst_dir / "labels").mkdir(parents=True, exist_ok=True)

    counts = {"seen": 0, "labelled": 0, "no_face": 0, "unreadable": 0, "train": 0, "val": 0, "test": 0}
    splits: dict[str, list[str]] = {split: [] for split in HELEN_SPLIT_FILES}
    start = last_report = time.monotonic()
    # Fail fast here: a worker whose initializer raises is respawned by Pool forever.
    try:
        start_mesh()
    except Exception as exc:  # noqa: BLE001 - any mediapipe install problem, reported in one line
        raise RuntimeError(f"the MediaPipe face mesh cannot start ({type(exc).__name__}: {exc}); see scripts/setup-env") from None
    with Pool(workers, initializer=start_mesh) as pool:
        for name, outcome in pool.imap_unordered(_label_one, [(p, dst_dir) for p in sources], chunksize=8):
            counts["seen"] += 1
            if outcome in splits:
                splits[outcome].append(name)
                counts[outcome] += 1
                counts["labelled"] += 1
            else:
                counts[outcome] += 1
            now = time.monotonic()
            if now - last_report > 10 or counts["seen"] == len(sources):
                last_report = now
                rate = counts["seen"] / max(now - start, 1e-9)
                print(
                    f"teacher: {counts['seen']}/{len(sources)} images, {rate:.1f}/s, "
                    f"{counts['no_face']} without a face, {counts['unreadable']} unreadable",
                    file=sys.stderr,
                    flush=True,
                )
    for split, file_name in HELEN_SPLIT_FILES.items():
        (dst_dir / file_name).write_text("".join(f"{n}\n" for n in sorted(splits[split])))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_parse.train.teacher", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="folder of face photos")
    parser.add_argument("dst", help="output folder (Helen layout)")
    parser.add_argument("--limit", type=int, default=None, help="label only the first N images (sorted by name)")
    parser.add_argument("--workers", type=int, default=2, help="processes, each with its own face mesh")
    args = parser.parse_args(argv)
    try:
        counts = pseudo_label(args.src, args.dst, limit=args.limit, workers=args.workers)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
