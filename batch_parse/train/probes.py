"""Scoring on real faces (a face-pool folder): F1 against the teacher, and probe hits against people.

For every held-out face of the split (aligned as inference aligns it, see facepool.py):

- **F1 vs teacher** per source and per pose bucket, Helen convention (evaluate.py), on the faces
  whose teacher labels are clean (flip-consistent): a guess of the mesh is not a reference.
  `skin` is scored against the teacher's face outline minus its parts (Helen's face_skin); a
  model without the skin class scores 0 there.
- **Probe hits**: each human point (Caltech's eye centres, nose, mouth centre; CFP fiducials
  reduced to one point per part) must fall on a pixel of its part (an F1 group of
  batch_parse.labels) in the label map. Reported per pose bucket and part for the model and for
  the teacher on the very same faces; where the teacher gave no labels its probes count as
  misses, since a user gets no labels there either.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from batch_parse.labels import F1_GROUPS, NUM_CLASSES
from batch_parse.train.datasets import read_helen_labels, read_rgb
from batch_parse.train.evaluate import confusion, f1_scores
from batch_parse.train.facerecord import POSES, FaceRecord, read_records

ALL = "all"


def probe_hits(label_map: np.ndarray | None, probes: list[tuple[str, list[float]]]) -> list[tuple[str, bool]]:
    """(part, hit) per probe: the pixel nearest the point is one of the part's classes.

    No label map (a face the teacher gave no labels) misses every probe: a user gets nothing there."""
    if label_map is None:
        return [(part, False) for part, _ in probes]
    height, width = label_map.shape
    out = []
    for part, (u, v) in probes:
        x, y = int(round(u)), int(round(v))
        inside = 0 <= x < width and 0 <= y < height
        out.append((part, bool(inside and label_map[y, x] in F1_GROUPS[part])))
    return out


def read_face(root: Path, name: str) -> np.ndarray:
    return read_rgb(root / "images" / f"{name}.jpg")


def read_teacher(root: Path, name: str) -> np.ndarray | None:
    """The teacher's class map of a face (skin included), or None where it gave none."""
    label_dir = root / "labels" / name
    return read_helen_labels(label_dir, name) if label_dir.is_dir() else None


class Scores:
    """Histograms and probe tallies accumulated face by face."""

    def __init__(self) -> None:
        self.hist: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
        # (who, pose, part) -> [hits, probes]
        self.probes: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        self.faces: dict[str, int] = defaultdict(int)

    def add(self, record: FaceRecord, pred: np.ndarray, teacher: np.ndarray | None) -> None:
        pose = record.pose
        self.faces[pose] += 1
        if teacher is not None and record.clean:
            h = confusion(pred, teacher)
            for key in ((record.source, pose), (record.source, ALL), (ALL, pose), (ALL, ALL)):
                self.hist[key] += h
        for who, labels in (("model", pred), ("teacher", teacher)):
            for part, hit in probe_hits(labels, record.probes):
                for key in ((who, pose, part), (who, pose, ALL), (who, ALL, part), (who, ALL, ALL)):
                    self.probes[key][0] += hit
                    self.probes[key][1] += 1

    def f1(self) -> dict[tuple[str, str], dict[str, float]]:
        return {key: f1_scores(h) for key, h in sorted(self.hist.items())}

    def hit_rates(self) -> dict[tuple[str, str, str], tuple[float, int]]:
        return {key: (hits / n if n else float("nan"), n) for key, (hits, n) in sorted(self.probes.items())}

    def to_json(self) -> dict:
        """Plain JSON (no NaN): a score with nothing to count is null."""
        def num(x: float) -> float | None:
            return None if x != x else x

        return {
            "faces_by_pose": dict(self.faces),
            "f1_vs_teacher": {f"{s}/{p}": {g: num(v) for g, v in f1.items()} for (s, p), f1 in self.f1().items()},
            "probe_hits": {f"{w}/{p}/{part}": {"rate": num(r), "probes": n} for (w, p, part), (r, n) in self.hit_rates().items()},
        }


def score_facepool(predict: Callable[[list[np.ndarray]], list[np.ndarray]], root: str | Path, split: str = "test",
                   limit: int | None = None, batch_size: int = 32, sources: tuple[str, ...] | None = None) -> Scores:
    """predict: aligned RGB faces -> label maps of the same sizes. Scores every written face of the split."""
    root = Path(root)
    records = [r for r in read_records(root) if r.written and r.split == split and (sources is None or r.source in sources)]
    records = records[:limit]
    scores = Scores()
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        preds = predict([read_face(root, r.name) for r in chunk])
        for r, pred in zip(chunk, preds, strict=True):
            scores.add(r, np.asarray(pred), read_teacher(root, r.name))
    return scores


def format_scores(scores: Scores) -> str:
    lines = ["F1 vs teacher (clean teacher labels), overall / brows / eyes / nose / mouth / skin, %:"]
    for (source, pose), f1 in scores.f1().items():
        lines.append(f"  {source:12} {pose:8} " + "  ".join(f"{g}={100 * f1[g]:.2f}" for g in ("overall", "brows", "eyes", "nose", "mouth", "skin")))
    lines.append("probe hits (model | teacher), % of probes (count):")
    parts = [ALL, *sorted({part for _, _, part in scores.probes} - {ALL})]
    rates = scores.hit_rates()
    for pose in (*POSES, ALL):
        cells = []
        for part in parts:
            m, n = rates.get(("model", pose, part), (float("nan"), 0))
            t, _ = rates.get(("teacher", pose, part), (float("nan"), 0))
            if n:
                cells.append(f"{part}={100 * m:.1f}|{100 * t:.1f} ({n})")
        if cells:
            lines.append(f"  {pose:8} " + "  ".join(cells))
    return "\n".join(lines)
