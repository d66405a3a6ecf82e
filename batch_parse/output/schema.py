"""The output table: its Arrow schema, column meanings, and the metadata every file carries.

This is the contract between the labeling job (writer) and everything that reads its output
(`inspect`, `render`, users' own code). README.md's "Output schema" section is generated from
COLUMN_DOCS, so the two cannot drift.
"""

from __future__ import annotations

import json

from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from batch_parse.storage.location import Location
from batch_parse.labels import CLASS_COLORS, CLASS_NAMES, NUM_PART_CLASSES, PART_NAMES, PARTS
from batch_parse.output.quality import PARSE_SCORE, PARSE_SCORE_DOC

SCHEMA_VERSION = 2
METADATA_KEY = b"batch_parse"

STATUS_OK = "ok"
STATUS_NO_FACE = "no_face"
STATUS_ERROR = "error"


def _part_fields() -> list[pa.Field]:
    fields = []
    for name in PART_NAMES:
        fields += [
            pa.field(f"{name}_crop", pa.binary()),
            pa.field(f"{name}_box", pa.list_(pa.float32(), 4)),
            pa.field(f"{name}_window", pa.list_(pa.float32(), 8)),
            pa.field(f"{name}_confidence", pa.float32()),
        ]
    return fields


def _pixel_fields(class_names: tuple[str, ...]) -> list[pa.Field]:
    return [pa.field(f"pixels_{c}", pa.int64()) for c in class_names]


def table_schema(class_names: tuple[str, ...] = CLASS_NAMES, sharded: bool = False) -> pa.Schema:
    """The columns of a file labelled by a model with these classes: one pixels_<class> per class.

    A 9-class model's files (stn-icnn/v1, v2) have no pixels_skin column; the class list of every
    file is in its metadata (`class_names`), so readers take the classes from there.
    sharded: the source holds images inside shards or tables: the files have SHARD_FIELDS too
    (an output has one source, so all its files have them or none does).
    """
    fields = _fields(class_names)
    if sharded:
        at = [f.name for f in fields].index("size") + 1
        fields[at:at] = SHARD_FIELDS
    return pa.schema(fields)


def _fields(class_names: tuple[str, ...]) -> list[pa.Field]:
    return [

        pa.field("id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("etag", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("face_index", pa.int32()),
        pa.field("face_count", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_code", pa.string()),
        pa.field("error", pa.string()),
        pa.field("face_box", pa.list_(pa.float32(), 4)),
        pa.field("landmarks", pa.list_(pa.float32(), 10)),
        pa.field("face_score", pa.float32()),
        pa.field("transform", pa.list_(pa.float64(), 6)),
        pa.field("aligned_width", pa.int32()),
        pa.field("aligned_height", pa.int32()),
        pa.field("label_map", pa.binary()),
        pa.field("label_map_x", pa.int32()),
        pa.field("label_map_y", pa.int32()),
        *_part_fields(),
        # The review score (output/quality.py), stored so SQL, DuckDB, pandas and `--where` filter by it;
        # after the confidences it is computed from. Files written before 0.6 lack it: readers compute it.
        pa.field(PARSE_SCORE, pa.float32()),
        *_pixel_fields(class_names),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("processed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]


# Columns of files whose source holds images inside shards (WebDataset tars) or tables (Parquet):
# where each image came from, to join the labels back to the corpus.
SHARD_FIELDS: tuple[pa.Field, ...] = (
    pa.field("source_shard", pa.string()),
    pa.field("source_key", pa.string()),
)
SHARD_COLUMNS = tuple(f.name for f in SHARD_FIELDS)

# The schema of files labelled with every class (skin included): the default model's.
BASE_SCHEMA = table_schema(CLASS_NAMES)
# Columns a file may lack: pixel counts of classes its model does not have.
OPTIONAL_COLUMNS = tuple(f"pixels_{c}" for c in CLASS_NAMES[NUM_PART_CLASSES:])
# Columns files written before them lack and readers compute from columns every file has
# (output/reader.py derive_columns): column -> the columns it is computed from.
DERIVED_COLUMNS: dict[str, tuple[str, ...]] = {PARSE_SCORE: tuple(f"{p}_confidence" for p in PART_NAMES)}

# Columns only in sets of human-corrected labels (`batch-parse import`, batch_parse/corrections/): the job's
# own rows have none of them (their labels are the model's). An imported row is BASE_SCHEMA's row of
# the same (id, face_index), its label_map and pixels_<class> the human's, and these columns after.
LABEL_SOURCE_HUMAN = "human"
CORRECTION_FIELDS: tuple[pa.Field, ...] = (
    pa.field("label_source", pa.string(), nullable=False),
    pa.field("corrected_by", pa.string()),
    pa.field("corrected_at", pa.timestamp("ms", tz="UTC")),
    pa.field("changed_pixels", pa.int64(), nullable=False),
    pa.field("corrected_in", pa.string(), nullable=False),
)

COLUMN_DOCS: dict[str, str] = {
    "id": "Stable int64 id of the source image, derived from its key (see storage/manifest.py). With `face_index`, unique in the output.",
    "key": "Object key (S3) or path relative to the source folder (local).",
    "etag": "S3 ETag at listing time (local: size-mtime); lets you detect objects changed since.",
    "size": "Size of the source object in bytes at listing time (an image inside a shard or table: its own bytes).",
    "source_shard": "Only in outputs of WebDataset or Parquet sources: the shard's (or table file's) key, as `key` names objects; join back with `source_key`.",
    "source_key": "Only in outputs of WebDataset or Parquet sources: the sample's `__key__` in its shard (Parquet: the --key-column value, else the row number in the file).",
    "width": "Width of the decoded image in pixels, after EXIF orientation (null on decode errors).",
    "height": "Height of the decoded image in pixels, after EXIF orientation (null on decode errors).",
    "face_index": "Which face of the image this row is, 0..face_count-1, largest detector box first; null for `no_face` and `error` rows.",
    "face_count": "Number of face rows the image has (all committed together); 0 for `no_face` and `error` rows, which are the image's one row.",
    "status": "`ok` (a parsed face), `no_face` (decoded, no face found: one row for the image) or `error` (not labelled: see error_code).",
    "error_code": "Short machine-readable reason for `error` rows (e.g. `truncated`, `not_an_image`, `too_large`, `not_found`, `model_failed`).",
    "error": "One-line human-readable error message, null unless status is `error`.",
    "face_box": "Detector box [x0, y0, x1, y1] in original pixels (`--faces whole-image`: the whole image).",
    "landmarks": "Detector landmarks as a flat list of 10 floats [x0, y0, x1, y1, ..., x4, y4] in original pixels (`numpy.reshape(5, 2)` gives the points): eye (image left), eye (image right), nose tip, mouth corner (image left), mouth corner (image right); null for whole-image.",
    "face_score": "Detector (MTCNN O-Net) confidence 0..1 that the box is a face; null for whole-image. Not the parse quality: see parse_score.",
    "transform": "Row-major 2x3 similarity matrix M mapping an original pixel (x, y, 1) to the aligned frame (u, v), pixel centres at integer coordinates; the face was parsed in that frame. Redo the frame with PIL: `photo.transform((aligned_width, aligned_height), Image.AFFINE, batch_parse.faces.align.Alignment(M, aligned_width, aligned_height).pil_affine())`. Identity for whole-image.",
    "aligned_width": "Width of the aligned frame in pixels (<= the face's own resolution, at most 256 for detected faces).",
    "aligned_height": "Height of the aligned frame in pixels.",
    "label_map": "8-bit palette PNG covering the face's region of the original image (the aligned frame mapped back, clipped to the image), pixel value = class index (class_names in the metadata), palette = the class colours (class_colors, batch_parse/labels.py), so image viewers show it in colour while `numpy.asarray(PIL.Image.open(...))` still gives the indices (files before 0.6: grey, same values). Readers that convert to RGB (OpenCV's imread) get colours: read with PIL or IMREAD_UNCHANGED. Place it at (label_map_x, label_map_y).",
    "label_map_x": "Column of the original image where the label map's left edge lies.",
    "label_map_y": "Row of the original image where the label map's top edge lies.",
    "<part>_crop": "The part's window cut upright from the aligned frame, JPEG or PNG (`crop_format` in the metadata); null when the window is off the frame. Parts: "
    + ", ".join(PART_NAMES)
    + ".",
    "<part>_box": "Axis-aligned bounds [x0, y0, x1, y1] of the part's window in original pixels (may extend past the image edge).",
    "<part>_window": "The part's window as a flat list of 8 floats [x0, y0, ..., x3, y3], its 4 corners in original pixels (`numpy.reshape(4, 2)`: top-left, top-right, bottom-right, bottom-left of the upright crop): a rotated rectangle when the face was tilted.",
    "<part>_confidence": "Mean stage-2 max class probability over the window pixels labelled as the part, 0..1 (0 = part not found in its window).",
    PARSE_SCORE: "The face's review score: " + PARSE_SCORE_DOC + ". Low = look at this face first (`render` orders by it; `export --where \"parse_score < 0.5\"`); on human-labelled photos the 20% lowest-scored faces held 70% of the 20% worst labels. Null for no_face and error rows; files written before batch-parse 0.6 lack the column and every batch-parse reader computes it.",
    "pixels_<class>": "Number of pixels of this face's label map with that class (background counts only the face's region). Classes: " + ", ".join(CLASS_NAMES) + " (pixels_skin only in files of models with the skin class, stn-icnn/v3 on; `class_names` in the metadata lists a file's classes).",
    "model_version": "Model name and weights hash, e.g. `stn-icnn/default@1a2b3c4d`; one output holds one model's labels (`.batch-parse/model.json`).",
    "processed_at": "UTC time the row was produced.",
    "label_source": "Only in sets `batch-parse import` writes: `human` (the label map was reviewed, and possibly corrected, in the tool named by corrected_in). The other columns are the original row's, the model's.",
    "corrected_by": "Only in imported sets: who submitted the correction, as the tool names them (Label Studio: the annotator's email, else their user id); null where the tool does not say (CVAT's mask archive).",
    "corrected_at": "Only in imported sets: UTC time of the correction as the tool records it (Label Studio: the annotation's updated_at); null where the tool does not say.",
    "changed_pixels": "Only in imported sets: pixels of this face's label map whose class the human changed (0 = accepted as the model labelled it).",
    "corrected_in": "Only in imported sets: `labelstudio` or `cvat`, the tool the correction came from.",
}

# How readers of schema v1 (one row per image, label map over the whole image) move to v2.
MIGRATION_V1 = """\
Schema v1 (batch-parse 0.1: one row per image) -> v2 (one row per face):
- Rows are keyed by (id, face_index), not id: group by `id` for per-image views; `face_count` says how many rows an image has.
- `status` gains `no_face` (one row for an image without faces). Error rows are unchanged (`face_count` = 0).
- `label_map` covers the face's region only: place it at (`label_map_x`, `label_map_y`) in a zero map of (height, width) to get v1's full-image map (union over an image's faces).
- `<part>_box` is still [x0, y0, x1, y1] in original pixels (now the bounds of the possibly rotated `<part>_window`); crops are cut from the upright aligned frame, not the original.
- New: `face_box`, `landmarks`, `face_score`, `transform`, `aligned_width`, `aligned_height`; metadata gains `faces`, `detector`, `min_face`, `detector_threshold`.
- `--faces whole-image` reproduces v1's per-image parse (without v1's face search), one row per image with `face_index` 0.
"""


def file_metadata(
    model_name: str,
    weights_sha256: str,
    crop_format: str,
    *,
    source: Location | str | None = None,
    policy: dict | None = None,
    class_names: tuple[str, ...] = CLASS_NAMES,
    source_record: dict | None = None,
    source_format: str = "files",
    image_column: str | None = None,
    key_column: str | None = None,
    licence: dict | None = None,
) -> dict[bytes, bytes]:
    """Schema-level metadata written into every output file.

    licence: the labels' terms and their source (model/licence.py Licence.as_dict()), inherited from the weights.

    class_names: the model's classes (label map values index them; one pixels_<class> each).

    source: where the labelled images were read from, recorded as its URI (an s3:// URI or a local
    folder) and how its store was reached (`endpoint_url`, `source_anonymous`; never credentials),
    so `render`, `export` and `import` can fetch an original by its row's key. A plain string is
    recorded as the URI of a source reached the default way.
    policy: the inference choices of the run (faces mode, detector, min_face, threshold): they
    belong to the job, not to the weights file, so they are recorded with the output.
    source_record: the source as the output records it (source_identity.canonical_source), so a
    data file copied on its own still says which corpus its ids belong to.
    """
    meta = {
        "schema_version": SCHEMA_VERSION,
        "model": model_name,
        "weights_sha256": weights_sha256,
        "class_names": list(class_names),
        "class_colors": [list(c) for c in CLASS_COLORS[: len(class_names)]],
        "parts": [{"name": p.name, "classes": list(p.classes)} for p in PARTS],
        "crop_format": crop_format,
        "licence": licence,
        "source": source if source is None or isinstance(source, str) else source.uri,
        "endpoint_url": getattr(source, "endpoint_url", None),
        "source_anonymous": bool(getattr(source, "anonymous", False)),
        **({"source_record": source_record} if source_record else {}),
        "source_format": source_format,  # files, webdataset or parquet (storage/sources.py)
        **({"image_column": image_column, "key_column": key_column} if source_format == "parquet" else {}),
        **(policy or {}),
        # Self-describing files: what each column means, and how v1 readers move to this schema.
        "columns": COLUMN_DOCS,
        "migration_from_v1": MIGRATION_V1,
    }
    return {METADATA_KEY: json.dumps(meta).encode()}


def output_schema(
    model_name: str, weights_sha256: str, crop_format: str, *, source: Location | str | None = None,
    policy: dict | None = None, class_names: tuple[str, ...] = CLASS_NAMES, source_format: str = "files",
    image_column: str | None = None, key_column: str | None = None, licence: dict | None = None,
    source_record: dict | None = None,
) -> pa.Schema:
    return table_schema(class_names, sharded=source_format != "files").with_metadata(
        file_metadata(model_name, weights_sha256, crop_format, source=source, policy=policy, class_names=class_names,
                      source_format=source_format, image_column=image_column, key_column=key_column, licence=licence,
                      source_record=source_record)
    )


# What makes a file's rows ours when its metadata is gone (pandas' to_parquet, polars and DuckDB
# rewrite the file without it): our key columns plus the image's key and the model version. Such a
# file is read as ours (with the metadata of our files of the same model version) and given its
# metadata back by the next run (pipeline/commit.py).
KEY_COLUMNS: tuple[str, ...] = ("id", "face_index", "face_count", "status", "error_code")
ROWS_OF_OURS: tuple[str, ...] = (*KEY_COLUMNS, "key", "model_version")


def model_version_of(meta: dict) -> str:
    """The `model_version` value rows written with this file metadata carry (model@hash prefix)."""
    return f"{meta.get('model')}@{str(meta.get('weights_sha256'))[:8]}"


def lost_its_metadata(schema: pa.Schema) -> bool:
    """A file with the columns of our rows but neither our metadata nor the columns of human corrections."""
    names = schema.names
    return (METADATA_KEY not in (schema.metadata or {}) and all(c in names for c in ROWS_OF_OURS)
            and not all(f.name in names for f in CORRECTION_FIELDS))


def read_metadata(schema: pa.Schema) -> dict:
    """The batch_parse metadata of a file's schema; raises ValueError for foreign files."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError("not a batch-parse output file (no batch_parse schema metadata)")
    meta = json.loads(raw)
    # Files written before these keys existed read as "source unknown".
    meta.setdefault("source", None)
    meta.setdefault("endpoint_url", None)
    meta.setdefault("source_anonymous", False)
    meta.setdefault("source_format", "files")
    return meta


def file_class_names(meta: dict) -> tuple[str, ...]:
    """A file's classes, from its metadata (files written before skin existed list their 9)."""
    return tuple(meta.get("class_names") or CLASS_NAMES[:NUM_PART_CLASSES])


def file_class_colors(meta: dict) -> tuple[tuple[int, int, int], ...]:
    names = file_class_names(meta)
    colors = meta.get("class_colors") or CLASS_COLORS
    return tuple(tuple(c) for c in colors[: len(names)])
