"""Hugging Face `datasets`: Parquet that `load_dataset("parquet", data_dir=OUT/data)` opens with typed features.

One row per image: `image`, `label_map` (the photo-sized class map, union of its faces) and every
face's crops are `Image` features, so `ds[0]["label_map"]` is a PIL image; `classes` (the classes
present) is a list of `ClassLabel(names=<the output's class_names>)`, which carries the class names in the
features (`ds.features["classes"].feature.names`). The features travel in the Parquet schema
metadata (key `huggingface`), written by the installed `datasets` itself so its version reads them.
`image` holds the original's path (local path or s3:// URI, which needs s3fs) or, with
--copy-images, its bytes. Parse quality (output/quality.py) is a column at both levels:
`parse_score` of each face and, per image, the lowest of its faces', so `ds.sort("parse_score")`
puts the most doubtful images first.

README.md is a dataset card whose YAML header (written by huggingface_hub's DatasetCardData) names
the data files (`configs`), the features and split sizes (`dataset_info`), the task and licence,
so `load_dataset(OUT)` and the Hub read the folder as one dataset with these features.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batch_parse.export.faces import Originals, Photo, copied_name
from batch_parse.labels import PART_NAMES
from batch_parse.output.codec import encode_label_map
from batch_parse.output.quality import PARSE_SCORE, PARSE_SCORE_DOC

COLUMNS: tuple[str, ...] = ("label_map", *(f"{p}_{c}" for p in PART_NAMES for c in ("crop", "box", "confidence")))
DATA = "data/train-00000-of-00001.parquet"
CARD = "README.md"
LICENCE = "LICENCE.md"  # the card's license_link: a file of the dataset itself, as the Hub resolves it
ROW_GROUP = 64  # images per row group: embedded originals keep a group to tens of MB


def check_installed() -> None:
    try:
        import datasets
    except ImportError as exc:
        raise ValueError("--to hf needs the datasets package: pip install 'batch-parse[export]'") from exc
    if not hasattr(datasets, "List"):
        raise ValueError(f"--to hf needs datasets >= 4 (installed: {datasets.__version__}): pip install -U datasets")


def features(class_names: tuple[str, ...]):
    """The dataset's features (datasets.Features) for an output with these classes (its metadata's)."""
    from datasets import ClassLabel, Features, List, Value
    from datasets import Image as ImageFeature

    face = {
        "face_index": Value("int32"),
        "face_score": Value("float32"),
        PARSE_SCORE: Value("float32"),
        "parts_found": Value("int32"),
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
        PARSE_SCORE: Value("float32"),  # the lowest of the faces'; null without a face
        "label_map": ImageFeature(),
        "classes": List(ClassLabel(names=list(class_names))),
        "faces": List(face),
    })  # fmt: skip


def _image(data: bytes | None, path: str | None = None) -> dict | None:
    return None if data is None and path is None else {"bytes": data, "path": path}


def _row(photo: Photo, originals: Originals | None, num_classes: int) -> dict:
    label_map, _ = photo.label_maps()
    image = _image(originals.read(photo), copied_name(photo.key)) if originals else _image(None, photo.uri())
    faces = []
    for face in photo.faces:
        row = {
            "face_index": face.index, "face_score": face.score, PARSE_SCORE: face.parse_score, "parts_found": face.parts_found,
            "face_box": None if face.box is None else face.box.tolist(),
            "landmarks": None if face.landmarks is None else face.landmarks.reshape(-1).tolist(),
            "label_map": _image(face.columns["label_map"]), "label_map_x": face.x, "label_map_y": face.y,
        }  # fmt: skip
        for part in PART_NAMES:
            row[f"{part}_crop"] = _image(face.columns[f"{part}_crop"])
            row[f"{part}_box"] = face.columns[f"{part}_box"]
            row[f"{part}_confidence"] = face.columns[f"{part}_confidence"]
        faces.append(row)
    present = np.flatnonzero(np.bincount(label_map.ravel(), minlength=num_classes))
    scores = photo.parse_scores()
    return {
        "image": image, "id": photo.id, "key": photo.key, "width": photo.width, "height": photo.height,
        "model_version": photo.model_version, PARSE_SCORE: min(scores) if scores else None, "label_map": _image(encode_label_map(label_map)),
        "classes": present.tolist(), "faces": faces,
    }  # fmt: skip


def card(images: int, faces: int, versions: list[str], sources: list[str], labels, num_bytes: int = 0) -> str:
    """README.md: the dataset card, a YAML header the Hub and `datasets` read, then what the columns mean."""
    from huggingface_hub import DatasetCardData

    header = DatasetCardData(
        pretty_name="batch-parse face parsing labels",
        license="other",  # the labels inherit the weights' terms, named here and in LICENCE.md
        license_name=labels.licence.name,
        license_link=LICENCE,
        annotations_creators=["machine-generated"],
        task_categories=["image-segmentation"],
        task_ids=["semantic-segmentation"],
        size_categories=[_size_category(images)],
        tags=["face-parsing", "batch-parse", "stn-icnn"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
        # num_bytes: datasets calls a split without it malformed and warns on every load.
        dataset_info={"features": features(labels.class_names)._to_yaml_list(),
                      "splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": images}]},
    )
    rows = "\n".join(f"| {i} | `{name}` | rgb{tuple(color)} |" for i, (name, color) in enumerate(zip(labels.class_names, labels.class_colors)))
    return (
        f"---\n{header.to_yaml()}\n---\n\n"
        "# batch-parse face parsing labels\n\n"
        f"Exported by `batch-parse export --to hf`: {images} image(s), {faces} face(s), labelled by "
        f"{', '.join(f'`{v}`' for v in versions) or 'batch-parse'} from {', '.join(f'`{s}`' for s in sources) or 'an unrecorded source'}.\n\n"
        "One row per image: `image`, `label_map` (8-bit palette PNG: pixel = class index, palette = class colours; the union\n"
        "of the image's faces), `classes` present, `parse_score` (the lowest of its faces') and `faces` (detector box,\n"
        "landmarks and score, `parse_score`, `parts_found`, the face's own label map and six part crops with boxes and\n"
        "confidences).\n\n"
        f"`parse_score`: {PARSE_SCORE_DOC}. `<part>_confidence`: the mean stage-2 probability over the pixels labelled as\n"
        "the part, 0 when the part was not found in its window.\n\n"
        "```python\nimport datasets\n"
        'ds = datasets.load_dataset("parquet", data_dir="data", split="train")  # or load_dataset(THIS_FOLDER)\n'
        'ds[0]["label_map"]  # PIL image\n'
        'ds.features["classes"].feature.names\n'
        'doubtful = ds.sort("parse_score").select(range(20))  # the least confident images first\n```\n\n'
        f"| index | class | colour |\n|---|---|---|\n{rows}\n\n"
        f"## Licence\n\n`{labels.licence.name}`: {labels.licence.terms}. Why: {labels.licence.source}. "
        f"See {labels.licence.link} (in the batch-parse package) and {LICENCE}.\n"
    )


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):  # fmt: skip
        if n < bound:
            return name
    return "10M<n<100M"


def export(photos: Iterable[Photo], out: Path, originals: Originals | None, result, labels) -> None:
    schema = features(labels.class_names).arrow_schema
    path = out / DATA
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    versions, sources = set(), set()
    num_bytes = 0  # Arrow bytes of the split, as datasets counts them
    with pq.ParquetWriter(path, schema) as writer:
        for photo in photos:
            versions.add(photo.model_version)
            sources.add(photo.source or "")
            rows.append(_row(photo, originals, len(labels.class_names)))
            result.copied += originals is not None
            result.images += 1
            result.faces += len(photo.faces)
            if len(rows) == ROW_GROUP:
                table = pa.Table.from_pylist(rows, schema=schema)
                writer.write_table(table)
                num_bytes += table.nbytes
                rows = []
        if rows or result.images == 0:
            table = pa.Table.from_pylist(rows, schema=schema)
            writer.write_table(table)
            num_bytes += table.nbytes
    (out / CARD).write_text(card(result.images, result.faces, sorted(versions), sorted(filter(None, sources)), labels, num_bytes),
                            encoding="utf-8")
    (out / LICENCE).write_text(f"# Licence of these labels\n\n{labels.licence.line()}\n", encoding="utf-8")
    result.files += [DATA, CARD, LICENCE]
