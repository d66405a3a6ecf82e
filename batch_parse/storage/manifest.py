"""The job's manifest: one Parquet row per image to label (stable id, key, size, etag), written as a stream."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_parse.storage.listing import ObjectInfo, ObjectListing

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("etag", pa.string()),
    ]
)
# Bounds the writer's memory (~1-2 MB of keys) and gives Ray Data read tasks a useful unit of work.
ROW_GROUP_ROWS = 10_000
# A manifest being written; renamed to its final name once complete.
PARTIAL_PREFIX = "_partial-"
_ID_MASK = (1 << 63) - 1


@dataclass
class ManifestStats:
    listed: int = 0  # images the listing yielded
    excluded: int = 0  # of those, already done (id in exclude_ids)
    written: int = 0  # rows in the manifest
    skipped_non_image: int = 0  # objects without an image extension (counted by the listing)
    skipped_unreadable: int = 0  # symlink loops, dangling links, sockets, unreadable folders (listing)
    unreadable_examples: list[str] = field(default_factory=list)  # "key: reason"


def object_id(key: str) -> int:
    """Stable non-negative int64 id of an object key: the same key gets the same id in every run.

    63 bits of blake2b: at 100 M keys the chance of any collision is ~5e-4; a collision would make
    the later key look already done, which is why ids are derived from keys, never reused for rows.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _ID_MASK


def write_manifest(
    objects: Iterable[ObjectInfo],
    path_or_uri: str,
    filesystem: pafs.FileSystem,
    exclude_ids: set[int] | np.ndarray | None = None,
) -> ManifestStats:
    """Stream `objects` into a Parquet manifest, leaving out ids in `exclude_ids`.

    Memory stays at one row group whatever the number of objects. When `objects` is an
    ObjectListing (what `iter_objects` returns) its skip count is carried into the result. The
    manifest is written as `_partial-<name>` and renamed to its name once complete (a killed
    listing leaves only a `_partial-` file, which remove_partial_manifests clears); a manifest with
    no rows is not kept. On an error (e.g. the listing fails half way) the partial file is removed
    before re-raising.
    """
    path = _fs_path(path_or_uri)
    folder, name = path.rsplit("/", 1)
    partial = f"{folder}/{PARTIAL_PREFIX}{name}"
    done = _sorted_ids(exclude_ids)
    stats = ManifestStats()
    if isinstance(filesystem, pafs.LocalFileSystem):
        # Only locally: on S3 a "folder" would be an empty marker object cluttering the bucket.
        filesystem.create_dir(folder or "/", recursive=True)
    writer = pq.ParquetWriter(partial, MANIFEST_SCHEMA, filesystem=filesystem)
    try:
        batch: list[ObjectInfo] = []
        for info in objects:
            batch.append(info)
            if len(batch) == ROW_GROUP_ROWS:
                _write_batch(writer, batch, done, stats)
                batch = []
        if batch:
            _write_batch(writer, batch, done, stats)
        writer.close()
    except BaseException:
        writer.close()
        _remove_quietly(filesystem, partial)
        raise
    if stats.written:
        filesystem.move(partial, path)
    else:
        _remove_quietly(filesystem, partial)
    if isinstance(objects, ObjectListing):
        stats.skipped_non_image = objects.stats.skipped_non_image
        stats.skipped_unreadable = objects.stats.skipped_unreadable
        stats.unreadable_examples = list(objects.stats.unreadable_examples)
    return stats


def remove_partial_manifests(filesystem: pafs.FileSystem, folder: str) -> int:
    """Delete the manifests a killed run left half written in `folder`; how many there were."""
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except FileNotFoundError:
        return 0
    partial = [i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(PARTIAL_PREFIX)]
    for path in partial:
        _remove_quietly(filesystem, path)
    return len(partial)


def read_manifest(path_or_uri: str, filesystem: pafs.FileSystem) -> pa.Table:
    return pq.read_table(_fs_path(path_or_uri), filesystem=filesystem, schema=MANIFEST_SCHEMA)


def _write_batch(writer: pq.ParquetWriter, batch: list[ObjectInfo], done: np.ndarray, stats: ManifestStats) -> None:
    ids = np.fromiter((object_id(o.key) for o in batch), dtype=np.int64, count=len(batch))
    keep = ~_is_member(ids, done)
    stats.listed += len(batch)
    stats.excluded += int(len(batch) - keep.sum())
    rows = [o for o, k in zip(batch, keep) if k]
    stats.written += len(rows)
    if not rows:
        return
    table = pa.table(
        {
            "id": pa.array(ids[keep], pa.int64()),
            "key": pa.array([o.key for o in rows], pa.string()),
            "size": pa.array([o.size for o in rows], pa.int64()),
            "etag": pa.array([o.etag for o in rows], pa.string()),
        },
        schema=MANIFEST_SCHEMA,
    )
    writer.write_table(table, row_group_size=ROW_GROUP_ROWS)


def _sorted_ids(exclude_ids: set[int] | np.ndarray | None) -> np.ndarray:
    # A sorted int64 array: 8 bytes per done id instead of ~60 for a Python int in a set, and a
    # vectorised membership test per row group.
    if exclude_ids is None or len(exclude_ids) == 0:
        return np.empty(0, dtype=np.int64)
    if isinstance(exclude_ids, np.ndarray):
        return np.unique(exclude_ids.astype(np.int64, copy=False))
    return np.unique(np.fromiter(exclude_ids, dtype=np.int64, count=len(exclude_ids)))


def _is_member(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    if sorted_ids.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    pos = np.searchsorted(sorted_ids, ids)
    pos[pos == sorted_ids.size] = 0
    return sorted_ids[pos] == ids


def _fs_path(path_or_uri: str) -> str:
    for scheme in ("s3://", "file://"):
        if path_or_uri.startswith(scheme):
            return path_or_uri[len(scheme) :]
    return path_or_uri


def _remove_quietly(filesystem: pafs.FileSystem, path: str) -> None:
    try:
        filesystem.delete_file(path)
    except OSError:
        pass
