"""Corrected faces as training data: the Helen layout `batch-parse train` (train/datasets.py) reads.

Each corrected face is written as the model sees it at inference: the photo warped into the
face's aligned frame by the row's own `transform` (faces/align.warp, as the face pool is built),
and its corrected label map carried into that frame by nearest neighbour, only this face's parts
(a neighbour's parts in the frame are background, as the teacher labels one face per frame).

    images/<id>_<face_index>.jpg               the aligned face (JPEG q95)
    labels/<id>_<face_index>/..._lblXX.png     one 0/255 mask per Helen label
    exemplars.txt / tuning.txt / testing.txt   train / val / test, split by a hash of the image id
                                               (all faces of a photo on one side)

Use it as DATA (`batch-parse train DIR RUN ...`) or add its train split to another set with
`--extra DIR`. The originals are read from the source the output records (file metadata).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from batch_parse.labels import CLASS_TO_HELEN
from batch_parse.output.codec import decode_label_map
from batch_parse.output.schema import STATUS_OK
from batch_parse.storage.location import Location
from batch_parse.train.datasets import HELEN_SPLIT_FILES, SPLITS, hash_split

_CLASS_TO_HELEN = np.asarray(CLASS_TO_HELEN, np.uint8)


def face_name(image_id: int, face_index: int) -> str:
    return f"{image_id}_{face_index}"


def frame_labels(label_map: np.ndarray, x: int, y: int, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """A face's label map (placed at x, y in its photo) in its aligned frame (width x height), nearest neighbour."""
    from batch_parse.faces.align import Alignment

    inv = Alignment(np.asarray(matrix, np.float64).reshape(2, 3), width, height).inverse
    vv, uu = np.mgrid[0:height, 0:width].astype(np.float64)
    xs = np.rint(inv[0, 0] * uu + inv[0, 1] * vv + inv[0, 2]).astype(np.int64) - x
    ys = np.rint(inv[1, 0] * uu + inv[1, 1] * vv + inv[1, 2]).astype(np.int64) - y
    h, w = label_map.shape
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    out = np.zeros((height, width), np.uint8)
    out[inside] = label_map[ys[inside], xs[inside]]
    return out


def write_helen(dst: Path, table: pa.Table, metadata: dict, output: Location | None = None) -> int:
    """Write the table's ok face rows into dst in the Helen layout; returns how many faces."""
    import torch

    from batch_parse.faces.align import Alignment, warp
    from batch_parse.pipeline.decode import DecodeError, decode_image
    from batch_parse.pipeline.options import DEFAULT_MAX_PIXELS
    from batch_parse.storage.fetch import FetchError
    from batch_parse.storage.originals import fetch_original
    from batch_parse.train.teacher import write_sample

    if not metadata.get("source"):
        raise ValueError("--helen needs the original images, and the output does not record where they were read from")
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir()
    columns = ["id", "key", "status", "face_index", "width", "height", "transform", "aligned_width", "aligned_height",
               "label_map", "label_map_x", "label_map_y"]  # fmt: skip
    by_photo: dict[int, list[dict]] = defaultdict(list)
    for row in table.select(columns).to_pylist():
        if row["status"] == STATUS_OK:
            by_photo[row["id"]].append(row)
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    written = 0
    for image_id, rows in by_photo.items():
        key = rows[0]["key"]
        data = fetch_original(metadata, key, output)
        if isinstance(data, FetchError):
            raise ValueError(f"--helen: cannot read the original {key}: {data.message}")
        try:
            photo = decode_image(data, DEFAULT_MAX_PIXELS)
        except DecodeError as exc:
            raise ValueError(f"--helen: cannot decode the original {key}: {exc.message}") from None
        if photo.shape[:2] != (rows[0]["height"], rows[0]["width"]):
            raise ValueError(f"--helen: the original {key} is now {photo.shape[1]}x{photo.shape[0]}, "
                             f"the output labelled it at {rows[0]['width']}x{rows[0]['height']}: it changed since")
        tensor = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)
        split = hash_split(str(image_id))
        for row in rows:
            matrix = np.asarray(row["transform"], np.float64).reshape(2, 3)
            width, height = row["aligned_width"], row["aligned_height"]
            frame = warp(tensor, Alignment(matrix, width, height)).permute(1, 2, 0).numpy()
            labels = frame_labels(decode_label_map(row["label_map"]), row["label_map_x"], row["label_map_y"], matrix, width, height)
            name = face_name(image_id, row["face_index"])
            write_sample(dst, name, frame, _CLASS_TO_HELEN[labels])
            splits[split].append(name)
            written += 1
    for split, names in splits.items():
        (dst / HELEN_SPLIT_FILES[split]).write_text("".join(f"{n}\n" for n in sorted(names)))
    return written
