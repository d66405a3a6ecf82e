"""Hugging Face `datasets`: Parquet that `load_dataset("parquet", data_dir=OUT/data)` opens with typed features.

One row per image: `image`, `label_map` (the photo-sized class map, union of its faces) and every
face's crops are `Image` features, so `ds[0]["label_map"]` is a PIL image; `classes` (the classes
present) is a list of `ClassLabel(names=CLASS_NAMES)`, which carries the class names in the
features (`ds.features["classes"].feature.names`). The features travel in the Parquet schema
metadata (key `huggingface`), written by the installed `datasets` itself so its version reads them.
`image` holds the original's path (local path or s3:// URI, which needs s3fs) or, with
--copy-images, its bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from batch_parse.export.faces import Originals, Photo, copied_name
from batch_parse.labels import CLASS_COLORS, CLASS_NAMES, PART_NAMES

COLUMNS: tuple[str, ...] = ("label_map", *(f"{p}_{c}" for p in PART_NAMES for c in ("crop", "box", "confidence")))
DATA = "data/train-00000-of-00001.parquet"
CARD = "README.md"
ROW_GROUP = 64  # images per row group: embedded originals keep a group to tens of MB


def check_installed() -> None:
    try:
        import datasets
    except ImportError as exc:
        raise ValueError("--to hf needs the datasets package: pip install 'batch-parse[export]'") from exc
    if not hasattr(datasets, "List"):
        raise ValueError(f"--to hf needs datasets >= 4 (installed: {datasets.__version__}): pip install -U datasets")


def features():
    """The dataset's features (datasets.Features)."""
    from datasets import ClassLabel, Features, List, Value
    from datasets import Image as ImageFeature

    face = {
        "face_index": Value("int32"),
        "face_score": Value("float32"),
        "face_box": List(Value("float32"), length=4),
        "landmarks": List(Value("float32"), length=10),
        "label_map": ImageFeature(),  # the face's region, placed at (label_map_x, label_map_y)
        "label_map_x": Value("int32"),
        "label_map_y": Value("int32"),
    }
    for part in PART_NAMES:
        face[f"{part}_crop"] = ImageFeature()
        face[f"{part}_box"] = List(Value("float32"), length=4)
        face[f"{part}_confidence"] = Value("float32")
    return Features({
        "image": ImageFeature(),
        "id": Value("int64"),
        "key": Value("string"),
        "width": Value("int32"),
        "height": Value("int32"),
        "model_version": Value("string"),
        "label_map": ImageFeature(),
        "classes": List(ClassLabel(names=list(CLASS_NAMES))),
        "faces": List(face),
    })  # fmt: skip


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _image(data: bytes | None, path: str | None = None) -> dict | None:
    return None if data is None and path is None else {"bytes": data, "path": path}


def _row(photo: Photo, originals: Originals | None) -> dict:
    label_map, _ = photo.label_maps()
    image = _image(originals.read(photo), copied_name(photo.key)) if originals else _image(None, photo.uri())
    faces = []
    for face in photo.faces:
        row = {
            "face_index": face.index, "face_score": face.score,
            "face_box": None if face.box is None else face.box.tolist(),
            "landmarks": None if face.landmarks is None else face.landmarks.reshape(-1).tolist(),
            "label_map": _image(face.columns["label_map"]), "label_map_x": face.x, "label_map_y": face.y,
        }  # fmt: skip
        for part in PART_NAMES:
            row[f"{part}_crop"] = _image(face.columns[f"{part}_crop"])
            row[f"{part}_box"] = face.columns[f"{part}_box"]
            row[f"{part}_confidence"] = face.columns[f"{part}_confidence"]
        faces.append(row)
    present = np.flatnonzero(np.bincount(label_map.ravel(), minlength=len(CLASS_NAMES)))
    return {
        "image": image, "id": photo.id, "key": photo.key, "width": photo.width, "height": photo.height,
        "model_version": photo.model_version, "label_map": _image(_png(label_map)),
        "classes": present.tolist(), "faces": faces,
    }  # fmt: skip


def card() -> str:
    rows = "\n".join(f"| {i} | `{name}` | rgb{tuple(color)} |" for i, (name, color) in enumerate(zip(CLASS_NAMES, CLASS_COLORS)))
    return (
        "# batch-parse face parsing labels\n\n"
        "Exported by `batch-parse export --to hf`. One row per image: `image`, `label_map` (8-bit, pixel = class index,\n"
        "the union of the image's faces), `classes` present, and `faces` (detector box, landmarks, score, the face's\n"
        "own label map and six part crops with boxes and confidences).\n\n"
        "```python\nimport datasets\n"
        'ds = datasets.load_dataset("parquet", data_dir="data", split="train")\n'
        'ds[0]["label_map"]  # PIL image\n'
        'ds.features["classes"].feature.names\n```\n\n'
        f"| index | class | colour |\n|---|---|---|\n{rows}\n"
    )


def export(photos: Iterable[Photo], out: Path, originals: Originals | None, result) -> None:
    schema = features().arrow_schema
    path = out / DATA
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with pq.ParquetWriter(path, schema) as writer:
        for photo in photos:
            rows.append(_row(photo, originals))
            result.copied += originals is not None
            result.images += 1
            result.faces += len(photo.faces)
            if len(rows) == ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        if rows or result.images == 0:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    (out / CARD).write_text(card(), encoding="utf-8")
    result.files += [DATA, CARD]
