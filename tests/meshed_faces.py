"""Real frontal faces framed and meshed as the face pool build does it (facepool.process_photo):
MTCNN, alignment, then the teacher's 3-D mesh and its label map, in our classes.

Shared by tests/test_synth_pose.py and benchmarks/synth_pose_sheet.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from batch_parse.labels import HELEN_TO_CLASS
from corpus import shared_dir


@dataclass(frozen=True)
class MeshedFace:
    name: str
    image: np.ndarray  # (H, W, 3) uint8 aligned frame
    mesh: np.ndarray  # (478, 3) teacher.mesh_rgb of it
    labels: np.ndarray  # (H, W) uint8 classes (batch_parse.labels)


def cfp_frontal_photos(n: int, every: int = 1, split: str | None = None) -> list[Path]:
    """The first frontal photo of CFP persons, every `every`-th person, n of them; only the face
    pool's `split` of persons (its hash split of "cfp-PERSON") when given."""
    from batch_parse.train.datasets import hash_split

    root = shared_dir() / "data" / "facepool" / "cfp" / "images"
    people = [p for p in sorted(root.iterdir()) if p.is_dir() and (split is None or hash_split(f"cfp-{p.name}") == split)]
    people = people[::every]
    return [sorted((p / "frontal").glob("*.jpg"))[0] for p in people[:n]]


def meshed_faces(photos: list[Path]) -> list[MeshedFace]:
    """Each photo's largest face, aligned and meshed; photos where either step fails are left out."""
    from batch_parse.faces import align, load_detector
    from batch_parse.train import teacher

    detector = load_detector("mtcnn", device="cpu")
    teacher.start_mesh()
    faces = []
    for path in photos:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        found = detector.detect([rgb])[0]
        if not len(found.scores):
            continue
        alignment = align.fit(found.landmarks[0].astype(np.float64))
        frame = align.warp(torch.from_numpy(np.array(rgb)).permute(2, 0, 1), alignment).permute(1, 2, 0).numpy()
        mesh = teacher.mesh_rgb(frame)
        if mesh is None:
            continue
        helen = teacher.labels_from_mesh(mesh, *frame.shape[:2])
        labels = np.asarray(HELEN_TO_CLASS, np.uint8)[helen]
        faces.append(MeshedFace(f"{path.parts[-3]}-{path.stem}", np.ascontiguousarray(frame), mesh, labels))
    return faces
