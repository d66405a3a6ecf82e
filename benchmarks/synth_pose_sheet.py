"""Contact sheet of frontal faces turned by batch_parse.train.synth_pose, its speed, and where MTCNN
marks the turned faces.

    python benchmarks/synth_pose_sheet.py                        # docs/synth_pose.png + speed
    python benchmarks/synth_pose_sheet.py --check-detector 24    # + MTCNN on 24 turned faces

The sheet: one row per CFP person (their first frontal photo, framed and meshed as the face pool
build does it), the face at yaw 0/30/60/80 with its synthetic labels over it (class colours from
batch_parse.labels) and its five detector-like points, and last that person's first real profile
photo framed by MTCNN, for comparison. Look at it: labels on the pixels they name, the far eye
gone behind the nose, a plausible profile in a plausible frame.

Speed: CPU seconds per turned face at 256 px (the largest aligned frame), one thread, frames and
meshes scaled up to 256 px; process time, so that other jobs on a shared machine do not count.

--check-detector N: MTCNN run on N turned faces (each pasted into a canvas with its edges
repeated, as a photo around it), and the mean offset of its five points from the synthetic ones,
per yaw, in frame sides; synth_pose.DETECTOR_SHIFT was set from this (residuals near 0 mean the
synthetic profiles sit in the frame a detected one would).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from batch_parse.labels import CLASS_COLORS  # noqa: E402
from batch_parse.train.synth_pose import turn_face  # noqa: E402
from meshed_faces import MeshedFace, cfp_frontal_photos, meshed_faces  # noqa: E402

YAWS = (0, 30, 60, 80)
TILE = 112
COLOURS = np.array(CLASS_COLORS, np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, points: np.ndarray) -> Image.Image:
    out = image.astype(np.float32)
    face = labels > 0
    out[face] = 0.45 * out[face] + 0.55 * COLOURS[labels[face]]
    tile = Image.fromarray(out.astype(np.uint8)).resize((TILE, TILE), Image.BILINEAR)
    draw = ImageDraw.Draw(tile)
    k = TILE / image.shape[1]
    for x, y in points:
        cx, cy = (x + 0.5) * k, (y + 0.5) * k
        draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=(255, 255, 0), outline=(0, 0, 0))
    return tile


def real_profile(photo: Path) -> Image.Image:
    """The person's first profile photo as inference frames it (MTCNN, alignment)."""
    from batch_parse.faces import align, load_detector

    blank = Image.new("RGB", (TILE, TILE), (60, 60, 60))
    profiles = sorted((photo.parents[1] / "profile").glob("*.jpg"))
    if not profiles:
        return blank
    rgb = np.asarray(Image.open(profiles[0]).convert("RGB"))
    found = load_detector("mtcnn", device="cpu").detect([rgb])[0]
    if not len(found.scores):
        return blank
    alignment = align.fit(found.landmarks[0].astype(np.float64))
    frame = align.warp(torch.from_numpy(np.array(rgb)).permute(2, 0, 1), alignment).permute(1, 2, 0).numpy()
    return Image.fromarray(frame).resize((TILE, TILE), Image.BILINEAR)


def sheet(faces: list[MeshedFace], photos: dict[str, Path], out: Path) -> None:
    cols = 2 * len(YAWS) + 1
    canvas = Image.new("RGB", (cols * TILE, len(faces) * TILE), (0, 0, 0))
    for row, face in enumerate(faces):
        for k, yaw in enumerate(YAWS):
            turned = turn_face(face.image, face.mesh, face.labels, yaw)
            canvas.paste(Image.fromarray(turned.image).resize((TILE, TILE), Image.BILINEAR), (2 * k * TILE, row * TILE))
            canvas.paste(overlay(turned.image, turned.labels, turned.landmarks), ((2 * k + 1) * TILE, row * TILE))
        canvas.paste(real_profile(photos[face.name]), ((cols - 1) * TILE, row * TILE))
    out.parent.mkdir(parents=True, exist_ok=True)
    # An adaptive palette keeps the sheet small enough to commit (photos compress poorly as PNG).
    canvas.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"sheet: {out} ({out.stat().st_size / 1024:.0f} KB), {len(faces)} faces x yaw {'/'.join(map(str, YAWS))} "
          "+ a real profile")


def speed(faces: list[MeshedFace], side: int = 256, repeats: int = 3) -> None:
    cpu, wall = [], []
    for face in faces:
        k = side / face.image.shape[0]
        image = np.asarray(Image.fromarray(face.image).resize((side, side), Image.BILINEAR))
        labels = np.asarray(Image.fromarray(face.labels).resize((side, side), Image.NEAREST))
        mesh = face.mesh * k
        for yaw in (30, 60, 80) * repeats:
            t0, w0 = time.process_time(), time.perf_counter()
            turn_face(image, mesh, labels, yaw)
            cpu.append(time.process_time() - t0)
            wall.append(time.perf_counter() - w0)
    print(f"speed at {side} px, 1 thread, {len(cpu)} turns: CPU median {1000 * np.median(cpu):.1f} ms, "
          f"p90 {1000 * np.percentile(cpu, 90):.1f} ms; wall median {1000 * np.median(wall):.1f} ms "
          f"(load average {os.getloadavg()[0]:.1f})")


def check_detector(faces: list[MeshedFace]) -> None:
    from batch_parse.faces import load_detector

    detector = load_detector("mtcnn", device="cpu")
    names = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")
    print(f"MTCNN on turned faces, its points minus synth_pose's, in frame sides (mean dx,dy over {len(faces)} faces):")
    for yaw in YAWS:
        offsets = []
        for face in faces:
            turned = turn_face(face.image, face.mesh, face.labels, yaw)
            h = turned.image.shape[0]
            canvas = np.pad(turned.image, ((h, h), (h, h), (0, 0)), mode="edge")
            found = detector.detect([canvas])[0]
            if not len(found.scores):
                continue
            nearest = int(np.argmin(np.linalg.norm(found.boxes[:, :2] - h, axis=1)))
            offsets.append((found.landmarks[nearest] - h - turned.landmarks) / h)
        if not offsets:
            print(f"  yaw {yaw:>2}: no face found")
            continue
        mean = np.mean(offsets, axis=0)
        cells = "  ".join(f"{n} {dx:+.3f},{dy:+.3f}" for n, (dx, dy) in zip(names, mean))
        print(f"  yaw {yaw:>2}: found {len(offsets)}/{len(faces)}  {cells}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "synth_pose.png")
    p.add_argument("--faces", type=int, default=6, help="rows of the sheet")
    p.add_argument("--check-detector", type=int, default=0, metavar="N", help="MTCNN on N turned faces")
    args = p.parse_args(argv)
    if args.faces < 1 or args.check_detector < 0:
        raise SystemExit("error: --faces must be >= 1 and --check-detector >= 0")
    torch.set_num_threads(1)
    photos = cfp_frontal_photos(args.faces, every=23)
    faces = meshed_faces(photos)
    if not faces:
        raise SystemExit("error: the MediaPipe mesh found no face in the CFP frontal photos")
    by_name = {f"{path.parts[-3]}-{path.stem}": path for path in photos}
    sheet(faces, by_name, args.out)
    speed(faces)
    if args.check_detector:
        check_detector(meshed_faces(cfp_frontal_photos(args.check_detector, every=7)))


if __name__ == "__main__":
    main()
