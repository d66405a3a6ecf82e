"""Parquet image tables as a source: images in a column, planned from the files' footers, read by row group.

The image column (`--image-column`, default `image`) is binary, or the Hugging Face `Image`
feature's struct `{bytes, path}` (its `bytes`). Each row is an image: its `source_key` is the
`--key-column` value, else its row number in the file; its `key` is "<file key>/<row number>".

Planning reads footers only (and the key column, when one is named). A file's identity is a
digest of its key, its size and its footer's layout (row groups, their row counts and column chunk
offsets and sizes), so a rewritten file is another file; an image's id is the identity (40 bits)
and its row number (23 bits): one contiguous block of ids per file, in row order, so a manifest
sorted by id hands a worker a run of rows of one row group, which it reads once (the column
chunk of that row group is the unit of reading; the last one read is kept for the next batch).

A file that is not Parquet, or lacks the image column, or whose column holds something else, is
one error row naming the file and what to do; it never stops the run.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_parse.storage.fetch import FetchError, group_by_container
from batch_parse.storage.listing import ListingStats, iter_objects, planned_in_order
from batch_parse.storage.location import Location
from batch_parse.storage.objects import ObjectInfo

ROW_BITS = 23  # ids per file: 8,388,608; the last is the file's own error row, so 8,388,607 rows are labelled
_IDENTITY_BITS = 63 - ROW_BITS
# A worker keeps the last row group's image column it read, for the next batch of the same rows.
_CACHE_BYTES = 512 << 20


def is_parquet_key(key: str) -> bool:
    return key.lower().endswith(".parquet")


def table_id(identity: bytes, row: int) -> int:
    prefix = int.from_bytes(identity[:8], "big") & ((1 << _IDENTITY_BITS) - 1)
    return (prefix << ROW_BITS) | row


def split_table_key(key: str) -> tuple[str | None, int | None]:
    """(file key, row number) of an image's `key` ("<file>.parquet/<row>"); (None, None) if it names none."""
    file_key, _, row = key.rpartition("/")
    if not is_parquet_key(file_key) or not row.isdigit():
        return None, None
    return file_key, int(row)


def image_type_problem(field: pa.Field | None, column: str) -> str | None:
    """Why `field` cannot be an image column; None when it can."""
    if field is None:
        return f"no column {column!r}"
    kind = field.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return None
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        return None
    return f"column {column!r} is {kind}, not image bytes (binary, or a {{bytes, path}} struct)"


def _open(fs: pafs.FileSystem, path: str) -> pq.ParquetFile:
    return pq.ParquetFile(fs.open_input_file(path))


def plan_table(fs: pafs.FileSystem, path: str, file_key: str, image_column: str, key_column: str | None,
               capacity: int = 1 << ROW_BITS) -> Iterator[ObjectInfo]:
    """The images of one Parquet file (footer, and the key column if named); one error row if it has none to give.

    A file has `capacity` ids: its rows take the first capacity - 1, and a file with more rows gets
    one error row (the last id) saying how many were not labelled."""

    def error(reason: str) -> Iterator[ObjectInfo]:
        identity = hashlib.blake2b(file_key.encode(), digest_size=16).digest()
        where = f"{file_key}/(file)"
        yield ObjectInfo(key=where, size=None, etag=identity.hex(), id=table_id(identity, 0), source_shard=file_key,
                         source_key="", offset=0, error_code="not_an_image", error=f"{where}: {reason}")

    try:
        table = _open(fs, path)
    except (pa.ArrowInvalid, OSError) as exc:
        yield from error(f"not a readable Parquet file ({' '.join(str(exc).split())[:200]})")
        return
    schema, meta = table.schema_arrow, table.metadata
    problem = image_type_problem(schema.field(image_column) if image_column in schema.names else None, image_column)
    if problem is None and key_column is not None and key_column not in schema.names:
        problem = f"no key column {key_column!r}"
    if problem is not None:
        shown = ", ".join(schema.names[:8]) + (", ..." if len(schema.names) > 8 else "")
        yield from error(f"{problem} (columns: {shown}): name the image column with --image-column (and --key-column)")
        return
    layout = hashlib.blake2b(digest_size=16)
    layout.update(f"{file_key}\0{fs.get_file_info(path).size}\0{meta.num_rows}".encode())
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        layout.update(f"|{group.num_rows}".encode())
        for c in range(group.num_columns):
            chunk = group.column(c)
            layout.update(f",{chunk.file_offset}:{chunk.total_compressed_size}".encode())
    identity = layout.digest()
    etag = identity.hex()
    row, last = 0, capacity - 1
    for g in range(meta.num_row_groups):
        if row >= last:
            break
        count = min(meta.row_group(g).num_rows, last - row)
        keys = (table.read_row_group(g, columns=[key_column]).column(0).to_pylist()[:count] if key_column else
                [str(row + i) for i in range(count)])
        for i, source_key in enumerate(keys):
            yield ObjectInfo(key=f"{file_key}/{row + i}", size=None, etag=etag, id=table_id(identity, row + i),
                             source_shard=file_key, source_key=str(source_key), offset=row + i)
        row += count
    if meta.num_rows > last:
        where = f"{file_key}/(after row {last})"
        yield ObjectInfo(key=where, size=None, etag=etag, id=table_id(identity, last), source_shard=file_key, source_key="",
                         offset=0, error_code="too_many_rows",
                         error=f"{where}: {meta.num_rows - last} rows past the first {last} of {file_key} are not labelled "
                               f"(a file's ids hold {last}): split the file")


class TableImages:
    """The images of a source of Parquet files, planned listing.PLAN_THREADS files at a time; `stats` as a listing's."""

    def __init__(self, source: Location, object_list: str | None = None, image_column: str = "image",
                 key_column: str | None = None):
        self.source, self.image_column, self.key_column = source, image_column, key_column
        self.listing = iter_objects(source, fan_out=True, object_list=object_list, wanted=is_parquet_key)
        self.stats: ListingStats = self.listing.stats
        self._images = self._plan()

    def __iter__(self) -> Iterator[ObjectInfo]:
        return self

    def __next__(self) -> ObjectInfo:
        return next(self._images)

    def _plan(self) -> Iterator[ObjectInfo]:
        from batch_parse.storage.sources import shard_relative

        fs = self.source.filesystem()
        count = 0

        def plan(info: ObjectInfo) -> list[ObjectInfo]:
            path = self.source.fs_path(shard_relative(self.source, info.key))
            return list(plan_table(fs, path, info.key, self.image_column, self.key_column))

        for images in planned_in_order(self.listing, plan):
            count += len(images)
            yield from images
        self.stats.images = count


_cache: dict = {}
_cache_lock = threading.Lock()


def _row_group_images(fs: pafs.FileSystem, path: str, etag: str, group: int, column: str) -> pa.Array:
    with _cache_lock:
        hit = _cache.get((path, etag, group, column))
    if hit is not None:
        return hit
    values = _open(fs, path).read_row_group(group, columns=[column]).column(0).combine_chunks()
    if pa.types.is_struct(values.type):
        values = values.field("bytes")
    with _cache_lock:
        _cache.clear()
        if values.nbytes <= _CACHE_BYTES:
            _cache[(path, etag, group, column)] = values
    return values


def read_table_images(source: Location, file_key: str, etag: str, rows: list[int], image_column: str) -> list[bytes | FetchError]:
    """The image bytes of `rows` (row numbers) of one Parquet file, each row group read once."""
    from batch_parse.storage.s3 import describe_error
    from batch_parse.storage.sources import shard_relative

    fs = source.filesystem()
    path = source.fs_path(shard_relative(source, file_key))
    try:
        meta = _open(fs, path).metadata
        starts, total = [], 0
        for g in range(meta.num_row_groups):
            starts.append(total)
            total += meta.row_group(g).num_rows
        out: list[bytes | FetchError] = []
        for row in rows:
            if not 0 <= row < total:
                out.append(FetchError("not_found", f"{file_key}/{row}: the file has {total} rows (rewritten since?)", retry_now=False))
                continue
            group = max(g for g, start in enumerate(starts) if start <= row)
            data = _row_group_images(fs, path, etag, group, image_column)[row - starts[group]].as_py()
            out.append(data if data is not None else FetchError("empty", f"{file_key}/{row}: no image bytes in this row",
                                                                retry_now=False))
        return out
    except FileNotFoundError:
        return [FetchError("not_found", f"{file_key} no longer exists (deleted since planning?)", retry_now=False)] * len(rows)
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        return [FetchError("fetch_failed", f"{file_key}: {describe_error(exc, source)}")] * len(rows)


def fetch_table_images(source: Location, keys: list[str], image_column: str, key_column: str | None = None) -> list[bytes | FetchError]:
    """Originals of rows of a Parquet source by their `key` ("<file>/<row>"), for render, export and import."""
    out, by_file = group_by_container(keys, lambda key: split_table_key(key)[0], "not a row of a .parquet file")
    for file_key, indices in by_file.items():
        rows = [split_table_key(keys[i])[1] for i in indices]
        for i, data in zip(indices, read_table_images(source, file_key, "original", rows, image_column)):
            out[i] = data
    return out
