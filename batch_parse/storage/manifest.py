"""The job's manifest: one Parquet row per image to label (stable id, key, size, etag), minus what is done.

Two passes, each with memory bounded whatever the size of the listing or of the history:
  1. the listing is streamed into sorted "parts" (`_listing-<name>/part-*.parquet` beside the
     manifest, PART_ROWS rows each, sorted by id);
  2. the id space is cut into ranges (storage/id_ranges.py); for each range, the parts' rows in it
     are compared with the done ids in it (read from the committed index, pipeline/commit.py)
     and what is not done is appended to the manifest.
The manifest is written as `_partial-<name>` and renamed once complete; a killed run leaves only
`_partial-` files and `_listing-` folders, which remove_partial_manifests clears.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_parse.storage import id_ranges
from batch_parse.storage.listing import ListingStats
from batch_parse.storage.objects import ObjectInfo

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("etag", pa.string()),
        # Images inside shards (storage/shards.py); null for one object per image.
        pa.field("source_shard", pa.string()),
        pa.field("source_key", pa.string()),
        pa.field("offset", pa.int64()),
        pa.field("error_code", pa.string()),  # planned error rows (truncated shard, repeated key)
        pa.field("error", pa.string()),
    ]
)
# Bounds the writer's memory (~1-2 MB of keys) and gives Ray Data read tasks a useful unit of work.
ROW_GROUP_ROWS = 10_000
# Listing rows per sorted part (~25 MB of keys in memory while a part is filled).
PART_ROWS = 200_000
# A manifest being written, renamed to its final name once complete; the listing parts of one.
PARTIAL_PREFIX = "_partial-"
PARTS_PREFIX = "_listing-"
_ID_MASK = (1 << 63) - 1


class DoneIds(Protocol):
    """What the manifest leaves out: commit.CommittedIndex, or a plain array (DoneArray)."""

    size: int  # number of ids held (an upper bound is fine): sets the number of ranges

    def ids_in_range(self, lo: int, hi: int) -> np.ndarray:
        """Sorted done ids with lo <= id < hi (repeats allowed)."""


@dataclass
class DoneArray:
    """Done ids held in memory (tests, small callers)."""

    ids: np.ndarray

    @property
    def size(self) -> int:
        return len(self.ids)

    def ids_in_range(self, lo: int, hi: int) -> np.ndarray:
        return self.ids[(self.ids >= lo) & (self.ids < hi)]


@dataclass
class ManifestStats:
    listed: int = 0  # images the listing yielded
    excluded: int = 0  # of those, already done (or listed twice)
    written: int = 0  # rows in the manifest
    skipped_non_image: int = 0  # objects without an image extension (counted by the listing)
    non_image_examples: list[str] = field(default_factory=list)
    skipped_system: int = 0  # ._* sidecars, .DS_Store, __MACOSX/, trash and thumbnail folders (listing.SYSTEM_*)
    system_examples: list[str] = field(default_factory=list)
    skipped_unreadable: int = 0  # symlink loops, dangling links, sockets, unreadable folders (listing)
    unreadable_examples: list[str] = field(default_factory=list)  # "key: reason"
    skipped_second_path: int = 0  # symlinks to what the source holds by its real path (listing)
    second_path_examples: list[str] = field(default_factory=list)  # "link -> real key"
    list_seconds: float = 0.0  # listing, into sorted parts
    exclude_seconds: float = 0.0  # the anti-join against the done ids


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
    committed: DoneIds | None = None,
) -> ManifestStats:
    """List `objects` into a Parquet manifest, leaving out done ids (`committed`, or `exclude_ids`).

    Memory stays bounded whatever the number of objects or of done ids. When `objects` is an
    ObjectListing (what `iter_objects` returns) its skip counts are carried into the result. A
    manifest with no rows is not kept. On an error (e.g. the listing fails half way) the partial
    files are removed before re-raising.
    """
    path = _fs_path(path_or_uri)
    folder, name = path.rsplit("/", 1)
    partial, parts_dir = f"{folder}/{PARTIAL_PREFIX}{name}", f"{folder}/{PARTS_PREFIX}{name.rsplit('.', 1)[0]}"
    done = committed if committed is not None else DoneArray(_sorted_ids(exclude_ids))
    stats = ManifestStats()
    if isinstance(filesystem, pafs.LocalFileSystem):
        # Only locally: on S3 a "folder" would be an empty marker object cluttering the bucket.
        filesystem.create_dir(parts_dir, recursive=True)
    try:
        start = time.perf_counter()
        parts = _write_parts(objects, parts_dir, filesystem, stats)
        stats.list_seconds = time.perf_counter() - start
        start = time.perf_counter()
        _anti_join(parts, done, partial, filesystem, stats)
        stats.exclude_seconds = time.perf_counter() - start
    except BaseException:
        _remove_quietly(filesystem, partial)
        raise
    finally:
        _remove_folder_quietly(filesystem, parts_dir)
    if stats.written:
        filesystem.move(partial, path)
    else:
        _remove_quietly(filesystem, partial)
    if isinstance(getattr(objects, "stats", None), ListingStats):  # a listing, or shards planned from one
        stats.skipped_non_image = objects.stats.skipped_non_image
        stats.non_image_examples = list(objects.stats.non_image_examples)
        stats.skipped_system = objects.stats.skipped_system
        stats.system_examples = list(objects.stats.system_examples)
        stats.skipped_unreadable = objects.stats.skipped_unreadable
        stats.unreadable_examples = list(objects.stats.unreadable_examples)
        stats.skipped_second_path = objects.stats.skipped_second_path
        stats.second_path_examples = list(objects.stats.second_path_examples)
    return stats


def _write_parts(objects: Iterable[ObjectInfo], parts_dir: str, fs: pafs.FileSystem, stats: ManifestStats) -> list[str]:
    parts: list[str] = []
    batch: list[ObjectInfo] = []

    def flush() -> None:
        ids = np.fromiter((object_id(o.key) if o.id is None else o.id for o in batch), dtype=np.int64, count=len(batch))
        order = np.argsort(ids, kind="stable")
        columns = {"id": pa.array(ids[order], pa.int64())}
        for name in MANIFEST_SCHEMA.names[1:]:
            columns[name] = pa.array([getattr(batch[i], name) for i in order], MANIFEST_SCHEMA.field(name).type)
        table = pa.table(columns, schema=MANIFEST_SCHEMA)
        parts.append(f"{parts_dir}/part-{len(parts):05d}.parquet")
        pq.write_table(table, parts[-1], filesystem=fs, row_group_size=id_ranges.ROW_GROUP_ROWS)
        stats.listed += len(batch)
        batch.clear()

    for info in objects:
        batch.append(info)
        if len(batch) == PART_ROWS:
            flush()
    if batch:
        flush()
    return parts


def _anti_join(parts: list[str], done: DoneIds, partial: str, fs: pafs.FileSystem, stats: ManifestStats) -> None:
    if not parts:
        return
    writer = pq.ParquetWriter(partial, MANIFEST_SCHEMA, filesystem=fs)
    try:
        for lo, hi in id_ranges.ranges(id_ranges.range_count(max(stats.listed, done.size))):
            listed = pa.concat_tables(id_ranges.read_ranges(fs, parts, lo, hi, MANIFEST_SCHEMA.names))
            ids = listed["id"].to_numpy()
            # Sorted, and each id once (a key listed twice, e.g. by an inventory of versions). A stable
            # argsort, not np.unique: numpy 2's hashing unique is ~30x slower on millions of ids.
            order = np.argsort(ids, kind="stable")
            ids = ids[order]
            first = np.r_[True, ids[1:] != ids[:-1]] if len(ids) else np.zeros(0, dtype=bool)
            keep = ~id_ranges.is_member(ids[first], done.ids_in_range(lo, hi))
            rows = listed.take(pa.array(order[first][keep]))
            stats.written += rows.num_rows
            if rows.num_rows:
                writer.write_table(rows, row_group_size=ROW_GROUP_ROWS)
    finally:
        writer.close()
    stats.excluded = stats.listed - stats.written


def remove_partial_manifests(filesystem: pafs.FileSystem, folder: str) -> int:
    """Delete the manifests (and listing parts) a killed run left half written in `folder`; how many."""
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except FileNotFoundError:
        return 0
    removed = 0
    for info in infos:
        if info.base_name.startswith(PARTIAL_PREFIX) and info.type == pafs.FileType.File:
            _remove_quietly(filesystem, info.path)
            removed += 1
        elif info.base_name.startswith(PARTS_PREFIX):
            _remove_folder_quietly(filesystem, info.path)
            removed += 1
    return removed


def read_manifest(path_or_uri: str, filesystem: pafs.FileSystem) -> pa.Table:
    return pq.read_table(_fs_path(path_or_uri), filesystem=filesystem, schema=MANIFEST_SCHEMA)


def _sorted_ids(exclude_ids: set[int] | np.ndarray | None) -> np.ndarray:
    # A sorted int64 array: 8 bytes per done id instead of ~60 for a Python int in a set, and a
    # vectorised membership test per range.
    if exclude_ids is None or len(exclude_ids) == 0:
        return np.empty(0, dtype=np.int64)
    if isinstance(exclude_ids, np.ndarray):
        return np.unique(exclude_ids.astype(np.int64, copy=False))
    return np.unique(np.fromiter(exclude_ids, dtype=np.int64, count=len(exclude_ids)))


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


def _remove_folder_quietly(filesystem: pafs.FileSystem, path: str) -> None:
    try:
        filesystem.delete_dir(path)
    except OSError:
        pass
