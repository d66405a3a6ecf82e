"""Keys from an existing object list instead of a listing: an S3 Inventory report, or any Parquet of keys.

For buckets too big to list every night. PATH (local or s3://) is one of:
  - an S3 Inventory `manifest.json` on S3 (CSV or Parquet inventory files, read from the
    destination bucket it names; CSV keys are URL-decoded as S3 writes them);
  - a Parquet file, or a folder of them, with a `key` column and optionally `size`, `etag` (or
    `e_tag`), `bucket`, `is_latest`, `is_delete_marker` (an inventory's own Parquet files qualify).
Keys are object keys for S3 sources (only those under the source prefix, and of the source bucket
when there is a bucket column, are taken) and paths relative to the folder for local sources. Rows
of old versions and delete markers are skipped. Files are read in batches: memory stays flat.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_parse.storage.location import Location
from batch_parse.storage.objects import ObjectInfo
from batch_parse.storage.s3 import StorageError, describe_error, pyarrow_filesystem

BATCH_ROWS = 65_536
# S3 Inventory field names (CSV fileSchema) -> the Parquet inventory's column names.
_INVENTORY_FIELDS = {"Bucket": "bucket", "Key": "key", "Size": "size", "ETag": "e_tag", "IsLatest": "is_latest",
                     "IsDeleteMarker": "is_delete_marker"}  # fmt: skip


def walk_object_list(path: str, source: Location) -> Iterator[tuple[str, ObjectInfo]]:
    """(key relative to the source, ObjectInfo) for every object of `source` in the list at `path` (in the source's store)."""
    where = source.in_same_store(path)
    fs = pyarrow_filesystem(where)
    try:
        if where.fs_path().endswith("manifest.json"):
            batches = _inventory_batches(fs, where)
        else:
            batches = _parquet_batches(fs, _parquet_files(fs, where))
        for batch in batches:
            yield from _entries(batch, source)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"cannot read the object list {path}: {describe_error(exc, where)}") from None


def _parquet_files(fs: pafs.FileSystem, where: Location) -> list[str]:
    info = fs.get_file_info(where.fs_path())
    if info.type == pafs.FileType.File:
        return [info.path]
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"object list not found: {where.uri}")
    infos = fs.get_file_info(pafs.FileSelector(where.fs_path(), recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def _parquet_batches(fs: pafs.FileSystem, paths: list[str]) -> Iterator[pa.RecordBatch]:
    for path in paths:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            names = set(parquet.schema_arrow.names)
            if "key" not in names:
                raise StorageError(f"object list {path} has no `key` column (columns: {', '.join(sorted(names))})")
            wanted = [c for c in ("bucket", "key", "size", "etag", "e_tag", "is_latest", "is_delete_marker") if c in names]
            yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted)


def _inventory_batches(fs: pafs.FileSystem, where: Location) -> Iterator[pa.RecordBatch]:
    if not where.is_s3:
        raise StorageError(f"an inventory manifest is read from S3 (its files are keys of its destination bucket), not {where.uri}")
    with fs.open_input_stream(where.fs_path()) as f:
        manifest = json.loads(f.read())
    fmt = str(manifest.get("fileFormat", "")).upper()
    bucket = str(manifest.get("destinationBucket", "")).rsplit(":", 1)[-1] or where.bucket
    paths = [f"{bucket}/{entry['key']}" for entry in manifest.get("files", [])]
    if fmt == "PARQUET":
        yield from _parquet_batches(fs, paths)
    elif fmt == "CSV":
        fields = [_INVENTORY_FIELDS.get(name.strip(), name.strip()) for name in str(manifest.get("fileSchema", "")).split(",")]
        options = pacsv.ReadOptions(column_names=fields, block_size=8 << 20)
        convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in fields})
        for path in paths:
            with fs.open_input_stream(path, compression="gzip" if path.endswith(".gz") else None) as f:
                for batch in pacsv.open_csv(f, read_options=options, convert_options=convert):
                    yield _decoded_keys(batch)
    else:
        raise StorageError(f"inventory {where.uri}: file format {fmt or '(none)'} is not supported; use CSV or Parquet")


def _decoded_keys(batch: pa.RecordBatch) -> pa.RecordBatch:
    keys = pa.array([unquote_plus(k) for k in batch.column("key").to_pylist()], pa.string())
    return batch.set_column(batch.schema.get_field_index("key"), "key", keys)


def _entries(batch: pa.RecordBatch, source: Location) -> Iterator[tuple[str, ObjectInfo]]:
    columns = batch.to_pydict()
    n = batch.num_rows
    keys = columns["key"]
    sizes = columns.get("size") or [None] * n
    etags = columns.get("etag") or columns.get("e_tag") or [None] * n
    buckets = columns.get("bucket") or [None] * n
    latest = columns.get("is_latest") or [None] * n
    deleted = columns.get("is_delete_marker") or [None] * n
    prefix = source.list_prefix
    for key, size, etag, bucket, is_latest, is_deleted in zip(keys, sizes, etags, buckets, latest, deleted):
        if key is None or key.endswith("/") or _false(is_latest) or _true(is_deleted):
            continue
        if source.is_s3 and ((bucket is not None and bucket != source.bucket) or not key.startswith(prefix)):
            continue
        relative = key[len(prefix) :] if source.is_s3 else key
        yield relative, ObjectInfo(key=key, size=None if size in (None, "") else int(size), etag=(etag or "").strip('"'))


def _true(value) -> bool:
    return value is True or str(value).lower() == "true"


def _false(value) -> bool:
    return value is False or str(value).lower() == "false"
