"""The face pool's record of one face (DST/faces.jsonl), and its pose buckets.

facepool.py builds a face pool and writes one FaceRecord per detected face; probes.py (scoring),
selftrain.py and facepool.py's report read them back with read_records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# |yaw proxy| bounds of the pose buckets; calibrated on CFP's frontal and profile folders
# (see the model card: `python -m batch_parse.train.facepool --report DST`).
POSE_BOUNDS = (0.15, 0.40)
POSES = ("frontal", "turned", "profile")


@dataclass
class FaceRecord:
    name: str  # images/NAME.jpg when written
    source: str
    photo: str
    split: str
    face_index: int  # detection order in the photo (largest first)
    box: list[float]  # detector box, photo pixels
    score: float
    landmarks: list[list[float]]  # the detector's 5 points, aligned frame pixels
    matrix: list[list[float]]  # photo -> frame (2x3)
    side: int  # frame side
    yaw: float  # pose proxy (facepool.yaw_proxy)
    pose: str
    written: bool  # image written (frame side >= facepool.MIN_FRAME)
    teacher: str  # "ok", "no_face" (mesh found nothing), "skipped" (not written)
    flip_agreement: float | None  # teacher vs teacher on the mirror image, None without labels
    clean: bool  # teacher labels kept for training / scoring
    probes: list[tuple[str, list[float]]]  # human points in frame pixels: (F1 group, [u, v])


def pose_bucket(yaw: float) -> str:
    turned, profile = POSE_BOUNDS
    return POSES[0] if abs(yaw) < turned else POSES[1] if abs(yaw) < profile else POSES[2]


def read_records(dst: str | Path) -> list[FaceRecord]:
    path = Path(dst) / "faces.jsonl"
    if not path.is_file():
        raise ValueError(f"{dst} has no faces.jsonl: build it with python -m batch_parse.train.facepool")
    return [FaceRecord(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
