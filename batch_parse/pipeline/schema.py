"""The output table: its Arrow schema, column meanings, and the metadata every file carries.

This is the contract between the labeling job (writer) and everything that reads its output
(`inspect`, `render`, users' own code). README.md's "Output schema" section is generated from
COLUMN_DOCS, so the two cannot drift.
"""

from __future__ import annotations

import json

import pyarrow as pa

from batch_parse.labels import CLASS_COLORS, CLASS_NAMES, PART_NAMES, PARTS

SCHEMA_VERSION = 1
METADATA_KEY = b"batch_parse"

STATUS_OK = "ok"
STATUS_ERROR = "error"


def _part_fields() -> list[pa.Field]:
    fields = []
    for name in PART_NAMES:
        fields += [
            pa.field(f"{name}_crop", pa.binary()),
            pa.field(f"{name}_box", pa.list_(pa.float32(), 4)),
            pa.field(f"{name}_confidence", pa.float32()),
        ]
    return fields


def _pixel_fields() -> list[pa.Field]:
    return [pa.field(f"pixels_{c}", pa.int64()) for c in CLASS_NAMES]


BASE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("etag", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_code", pa.string()),
        pa.field("error", pa.string()),
        pa.field("label_map", pa.binary()),
        *_part_fields(),
        *_pixel_fields(),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("processed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)

COLUMN_DOCS: dict[str, str] = {
    "id": "Stable int64 id of the source object, derived from its key (see storage/manifest.py). Unique in the output.",
    "key": "Object key (S3) or path relative to the source folder (local).",
    "etag": "S3 ETag at listing time (local: size-mtime); lets you detect objects changed since.",
    "size": "Size of the source object in bytes at listing time.",
    "width": "Width of the decoded image in pixels, after EXIF orientation (null on decode errors).",
    "height": "Height of the decoded image in pixels, after EXIF orientation (null on decode errors).",
    "status": "`ok`, or `error` when the object could not be labelled; error rows have null outputs.",
    "error_code": "Short machine-readable reason for `error` rows (e.g. `truncated`, `not_an_image`, `too_large`, `not_found`).",
    "error": "One-line human-readable error message, null when status is `ok`.",
    "label_map": "8-bit grey PNG, same size as the image, pixel value = class index (see class_names in the metadata).",
    "<part>_crop": "The part's window cut from the original image at full resolution, JPEG or PNG (`crop_format` in the metadata). Parts: "
    + ", ".join(PART_NAMES)
    + ".",
    "<part>_box": "The part's window as [x0, y0, x1, y1] in original pixel coordinates (may extend past the image edge).",
    "<part>_confidence": "Mean stage-2 max class probability over the window pixels labelled as the part, 0..1 (0 = part not found in its window).",
    "pixels_<class>": "Number of pixels of the label map with that class. Classes: " + ", ".join(CLASS_NAMES) + ".",
    "model_version": "Model name and weights hash, e.g. `stn-icnn/default@1a2b3c4d`; output of each version lives in its own folder.",
    "processed_at": "UTC time the row was produced.",
}


def file_metadata(
    model_name: str,
    weights_sha256: str,
    crop_format: str,
    *,
    source: str | None = None,
    endpoint_url: str | None = None,
) -> dict[bytes, bytes]:
    """Schema-level metadata written into every output file.

    source / endpoint_url: where the labelled images were read from (an s3:// URI or a local
    folder, and the S3 endpoint), so `render` can fetch an original by its row's key.
    """
    meta = {
        "schema_version": SCHEMA_VERSION,
        "model": model_name,
        "weights_sha256": weights_sha256,
        "class_names": list(CLASS_NAMES),
        "class_colors": [list(c) for c in CLASS_COLORS],
        "parts": [{"name": p.name, "classes": list(p.classes)} for p in PARTS],
        "crop_format": crop_format,
        "source": source,
        "endpoint_url": endpoint_url,
    }
    return {METADATA_KEY: json.dumps(meta).encode()}


def output_schema(
    model_name: str, weights_sha256: str, crop_format: str, *, source: str | None = None, endpoint_url: str | None = None
) -> pa.Schema:
    return BASE_SCHEMA.with_metadata(
        file_metadata(model_name, weights_sha256, crop_format, source=source, endpoint_url=endpoint_url)
    )


def read_metadata(schema: pa.Schema) -> dict:
    """The batch_parse metadata of a file's schema; raises ValueError for foreign files."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError("not a batch-parse output file (no batch_parse schema metadata)")
    meta = json.loads(raw)
    # Files written before these keys existed read as "source unknown".
    meta.setdefault("source", None)
    meta.setdefault("endpoint_url", None)
    return meta
