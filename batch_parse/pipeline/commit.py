"""Exactly-once output: the committed data files *are* the checkpoint; a compact index says what they hold.

    OUTPUT/<version>/data/*.parquet     the labels, one row per face (schema.py)
    OUTPUT/<version>/_index/*.parquet   (id, file) of every complete image, sorted by id; the file's
                                        metadata names the data files it covers (name, size, mtime)

A Parquet file is readable only once its footer is written, so a data file either holds complete,
committed rows or is an unfinished write (a job killed mid-write). Rows are faces, keyed by
(image id, face_index), and every row of an image carries the image's face_count; an image is
committed when all its face rows are (a block boundary may put an image's faces in two files,
and a kill may land between them).

A data file that an index lists with its current size and mtime is *covered*: it was checked
when that index was written, and its rows are not read again. Before a run, the uncovered data
files (a killed run's, or all of them in an output written before indexes) are checked, all
together:
  1. unreadable files are deleted (their rows were never committed and will be redone),
  2. duplicate (id, face_index) rows are dropped (a write retried after it had landed),
  3. the rows of images with only some of their faces committed are removed (redone whole),
  4. retryable error rows (pipeline/errors.py: fetch_failed, access_denied, throttled,
     model_failed) are removed unless the run is told not to retry them: those images are
     redone, and their new rows never meet the old ones;
then they are *sealed*: a new index file covers them. Covered files that hold retryable rows (the
index counts them per file) are rewritten without them and sealed again: such a row is its
image's only row, so nothing else needs checking. An image's faces never span a covered and an
uncovered file, because a run writes only images the index does not hold. When a run ends, its
own new files are checked and sealed the same way, so a finished job is verified before it
reports success. A rewritten file has a new size and mtime: if a kill lands before it is sealed,
it is simply uncovered, and checked again by the next run.

The manifest leaves out the ids of covered files, read one id range at a time (storage/
id_ranges.py, storage/manifest.py): memory holds one range, however long the history. Index
files are merged once there are more than MAX_INDEX_FILES (all but the largest, unless the others
together outweigh it), so a run opens a bounded number of them. A run's cost is its listing, a
columnar read of ~12 bytes per committed image (in parallel), and its own new rows; it used to be
a read of every committed data file, one after another, with ~80 bytes per id held in the driver.
Rerunning the same command processes exactly what is missing, whatever killed the last run and
whenever; a run with nothing new writes nothing. Deleting `_index/` is always safe: the next run
checks every data file again and writes a new index.

Why not Ray Data's checkpointing: it is beta, keeps every id in driver memory, and its default
`delete_checkpoint_on_success=True` re-processes everything on scheduled reruns. Here the only
state is the output itself, which users can copy, prune or inspect without breaking resumes.
One writer per output folder at a time is enforced by storage/lease.py (a lease the run holds).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_parse.pipeline.errors import RETRYABLE
from batch_parse.pipeline.schema import STATUS_ERROR
from batch_parse.storage import id_ranges

INDEX_DIR = "_index"
MAX_INDEX_FILES = 16
SCAN_THREADS = 8  # data files read at once (S3 GETs overlap, Parquet decodes without the GIL)
INDEX_SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("file", pa.int32(), nullable=False)])
_INDEX_META = b"batch_parse_index"
_REWRITE_PREFIX = "_rewrite-"
# Rows of no_face / error images have a null face_index and face_count 0: they are the image's one row.
_NO_FACE = -1


@dataclass(frozen=True)
class DataFile:
    path: str
    name: str  # relative to the data folder: what an index records
    size: int
    mtime_ns: int | None

    def cover(self, retryable: Counter | None = None) -> dict:
        return {"name": self.name, "size": self.size, "mtime_ns": self.mtime_ns, "retryable": dict(retryable or {})}


@dataclass(eq=False)
class _IndexFile:
    path: str
    rows: int
    covers: list[dict]
    valid: np.ndarray  # per covers position: that data file is there, unchanged


@dataclass
class CommittedIndex:
    """The complete images of an output, held on storage and read one id range at a time."""

    fs: pafs.FileSystem
    files: list[_IndexFile] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(f.rows for f in self.files)

    def ids_in_range(self, lo: int, hi: int) -> np.ndarray:
        """Sorted ids of complete images with lo <= id < hi (an id may repeat: an image in two files)."""
        tables = id_ranges.read_ranges(self.fs, [f.path for f in self.files], lo, hi, INDEX_SCHEMA.names)
        ids = [t["id"].to_numpy()[f.valid[t["file"].to_numpy()]] for f, t in zip(self.files, tables) if t.num_rows]
        if len(ids) == 1:
            return ids[0]  # an index file is sorted by id
        # np.sort, not np.unique: numpy 2's hashing unique took 0.6 s per million ids here, sort 0.02 s.
        return np.sort(np.concatenate(ids)) if ids else np.empty(0, dtype=np.int64)


@dataclass
class CommitState:
    index: CommittedIndex  # what is committed (complete images), for the manifest to leave out
    files: list[str] = field(default_factory=list)  # data files, all of them
    scanned: int = 0  # data files whose rows were read (uncovered, or holding retryable rows)
    removed_incomplete: list[str] = field(default_factory=list)
    duplicates_removed: int = 0  # rows
    incomplete_images: int = 0  # images with only some faces committed, whose rows were removed
    retry_cleared: Counter = field(default_factory=Counter)  # error_code -> retryable error rows removed to redo them
    retryable_kept: Counter = field(default_factory=Counter)  # error_code -> retryable error rows left (not retrying)


def data_files(fs: pafs.FileSystem, data_dir: str) -> list[str]:
    return sorted(d.path for d in _data_files(fs, data_dir).values())


def _data_files(fs: pafs.FileSystem, data_dir: str) -> dict[str, DataFile]:
    infos = _listing(fs, data_dir, recursive=True)
    return {
        d.name: d
        for d in (DataFile(i.path, i.path[len(data_dir) + 1 :], i.size, i.mtime_ns) for i in infos)
        if d.path.endswith(".parquet") and not d.path.rsplit("/", 1)[-1].startswith((".", "_"))
    }


def _listing(fs: pafs.FileSystem, folder: str, recursive: bool = False) -> list[pafs.FileInfo]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=recursive, allow_not_found=True))
    except FileNotFoundError:
        return []
    return [i for i in infos if i.type == pafs.FileType.File]


def remove_partial_rewrites(fs: pafs.FileSystem, data_dir: str) -> int:
    """Delete the temporary files of rewrites a kill interrupted (the data file itself is intact)."""
    partial = [i.path for i in _listing(fs, data_dir) if i.base_name.startswith(_REWRITE_PREFIX)]
    for path in partial:
        fs.delete_file(path)
    return len(partial)


def recover(fs: pafs.FileSystem, data_dir: str, retry_errors: bool = False) -> CommitState:
    """Bring an output folder to a consistent state, seal what was checked, and return what it holds.

    retry_errors: also remove retryable error rows (their images are then not done, and redone).
    """
    index_dir = f"{data_dir.rsplit('/', 1)[0]}/{INDEX_DIR}"
    data = _data_files(fs, data_dir)
    indexes = _read_indexes(fs, index_dir, data)
    state = CommitState(index=CommittedIndex(fs))
    covered: dict[str, dict] = {}
    for index in indexes:
        covered.update((c["name"], c) for c, ok in zip(index.covers, index.valid) if ok)
    uncovered = [d for name, d in sorted(data.items()) if name not in covered]
    with_retryable = [data[name] for name, c in sorted(covered.items()) if c.get("retryable")]
    if not retry_errors:
        for d in with_retryable:
            state.retryable_kept.update(covered[d.name]["retryable"])
        with_retryable = []

    sealed: dict[str, tuple[np.ndarray, Counter]] = {}  # data file name -> (its complete ids, retryable rows kept)
    if uncovered:
        sealed.update(_check(fs, uncovered, retry_errors, state))
    for d in with_retryable:
        sealed.update(_without_retryable(fs, d, state))
    state.scanned = len(uncovered) + len(with_retryable)
    if state.scanned:
        # Files were deleted or rewritten: what the older indexes say of them no longer holds.
        data = _data_files(fs, data_dir)
        indexes = _still_valid(fs, indexes, data)
        files = [(data[name], ids, kept) for name, (ids, kept) in sorted(sealed.items()) if name in data]
        if files:
            ids = np.concatenate([ids for _, ids, _ in files])
            positions = np.concatenate([np.full(len(ids), i, np.int32) for i, (_, ids, _) in enumerate(files)])
            indexes.append(_write_index(fs, index_dir, [d.cover(kept) for d, _, kept in files], [(ids, positions)]))
    state.index = CommittedIndex(fs, _compact(fs, index_dir, indexes))
    state.files = sorted(d.path for d in data.values())
    return state


def _check(fs: pafs.FileSystem, files: list[DataFile], retry_errors: bool, state: CommitState) -> dict[str, tuple[np.ndarray, Counter]]:
    """Steps 1-4 over `files` together; per surviving file, its complete ids and the retryable rows it keeps."""
    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:
        keys = list(pool.map(lambda d: _read_keys(fs, d.path), files))
    per_file = []
    for d, k in zip(files, keys):
        if k is None:
            fs.delete_file(d.path)
            state.removed_incomplete.append(d.path)
        elif len(k[0]):
            per_file.append((d, k))
    if not per_file:
        return {}
    ids = np.concatenate([k[0] for _, k in per_file])
    faces = np.concatenate([k[1] for _, k in per_file])
    counts = np.concatenate([k[2] for _, k in per_file])
    codes = np.concatenate([k[3] for _, k in per_file])
    drop, state.duplicates_removed, incomplete_ids = rows_to_drop(ids, faces, counts)
    state.incomplete_images = len(incomplete_ids)
    retryable = np.not_equal(codes, None) & ~drop
    (state.retry_cleared if retry_errors else state.retryable_kept).update(codes[retryable].tolist())
    if retry_errors:
        drop |= retryable
    out, start = {}, 0
    for d, k in per_file:
        n = len(k[0])
        file_drop, file_ids, file_codes = drop[start : start + n], ids[start : start + n], codes[start : start + n]
        start += n
        if file_drop.any():
            _rewrite_without(fs, d.path, ~file_drop)
        kept = ~file_drop
        if kept.any():
            out[d.name] = (np.unique(file_ids[kept]), Counter(c for c in file_codes[kept] if c is not None))
    return out


def _without_retryable(fs: pafs.FileSystem, d: DataFile, state: CommitState) -> dict[str, tuple[np.ndarray, Counter]]:
    """A covered file rewritten without its retryable error rows; its remaining (complete) ids."""
    with fs.open_input_file(d.path) as f:
        table = pq.read_table(f)
    retryable = _retryable_mask(table).to_numpy(zero_copy_only=False)
    state.retry_cleared.update(table["error_code"].filter(pa.array(retryable)).to_pylist())
    _rewrite_without(fs, d.path, ~retryable, table)
    kept = table["id"].to_numpy()[~retryable]
    return {d.name: (np.unique(kept), Counter())} if len(kept) else {}


def _read_keys(fs: pafs.FileSystem, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(id, face_index, face_count, retryable error code or None) of a committed file's rows, or
    None if the file is incomplete (no valid footer)."""
    try:
        with fs.open_input_file(path) as f:
            table = pq.read_table(f, columns=["id", "face_index", "face_count", "status", "error_code"])
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowInvalid) and "Parquet" not in str(exc):
            raise  # a storage error is not evidence of an unfinished write: never delete on it
        return None
    faces = table["face_index"].fill_null(_NO_FACE).to_numpy().astype(np.int64)
    codes = pc.if_else(_retryable_mask(table), table["error_code"], None).to_numpy(zero_copy_only=False)
    return table["id"].to_numpy(), faces, table["face_count"].to_numpy().astype(np.int64), codes


def _retryable_mask(table: pa.Table) -> pa.ChunkedArray:
    mask = pc.and_(pc.equal(table["status"], STATUS_ERROR), pc.is_in(table["error_code"], pa.array(sorted(RETRYABLE))))
    return mask.fill_null(False)


def rows_to_drop(ids: np.ndarray, faces: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Rows (in file order) to delete: repeats of an (id, face) seen earlier, and every row of an
    image whose rows do not add up to its face_count. Returns (mask, duplicates, incomplete ids)."""
    n = len(ids)
    order = np.lexsort((np.arange(n), faces, ids))  # by id, then face, then first-written first
    sid, sface = ids[order], faces[order]
    repeat = np.zeros(n, dtype=bool)
    repeat[1:] = (sid[1:] == sid[:-1]) & (sface[1:] == sface[:-1])
    drop = np.zeros(n, dtype=bool)
    drop[order[repeat]] = True
    duplicates = int(repeat.sum())
    # Completeness per image over the rows kept so far.
    kept = order[~repeat]
    kid, kcount = ids[kept], counts[kept]
    starts = np.flatnonzero(np.r_[True, kid[1:] != kid[:-1]])
    rows = np.diff(np.r_[starts, len(kid)])
    high = np.maximum.reduceat(kcount, starts)
    low = np.minimum.reduceat(kcount, starts)
    complete = (rows == np.maximum(high, 1)) & (high == low)
    incomplete_ids = kid[starts[~complete]]
    if incomplete_ids.size:
        drop |= np.isin(ids, incomplete_ids)
    return drop, duplicates, incomplete_ids


def _rewrite_without(fs: pafs.FileSystem, path: str, keep: np.ndarray, table: pa.Table | None = None) -> None:
    if table is None:
        with fs.open_input_file(path) as f:
            table = pq.read_table(f)
    kept = table.filter(pa.array(keep))
    if kept.num_rows == 0:
        fs.delete_file(path)
        return
    # Write beside, then replace: the file is never half-written under its committed name.
    tmp = path.rsplit("/", 1)[0] + "/" + _REWRITE_PREFIX + path.rsplit("/", 1)[1]
    pq.write_table(kept, tmp, filesystem=fs)
    fs.move(tmp, path)


# --- index files ---------------------------------------------------------------------------------


def _read_indexes(fs: pafs.FileSystem, index_dir: str, data: dict[str, DataFile]) -> list[_IndexFile]:
    """The index files that still cover a data file; unreadable (half-written) or stale ones are deleted."""
    paths = sorted(i.path for i in _listing(fs, index_dir) if i.path.endswith(".parquet"))

    def footer(path: str) -> tuple[str, int, list[dict]] | None:
        try:
            with fs.open_input_file(path) as f:
                meta = pq.read_metadata(f)
            return path, meta.num_rows, json.loads(meta.metadata[_INDEX_META])["covers"]
        except (pa.ArrowInvalid, KeyError, TypeError, ValueError):
            return None  # killed while it was written: its files are uncovered, and checked again

    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:
        footers = list(pool.map(footer, paths))
    for path, found in zip(paths, footers):
        if found is None:
            fs.delete_file(path)
    indexes = [_IndexFile(path, rows, covers, np.ones(len(covers), dtype=bool)) for path, rows, covers in filter(None, footers)]
    return _still_valid(fs, indexes, data)


def _still_valid(fs: pafs.FileSystem, indexes: list[_IndexFile], data: dict[str, DataFile]) -> list[_IndexFile]:
    """Mark which covered files are there unchanged; delete index files that cover none any more."""
    kept = []
    for index in indexes:
        index.valid = np.array([_unchanged(c, data.get(c["name"])) for c in index.covers], dtype=bool)
        if index.valid.any():
            kept.append(index)
        else:
            fs.delete_file(index.path)
    return kept


def _unchanged(cover: dict, d: DataFile | None) -> bool:
    return d is not None and d.size == cover["size"] and d.mtime_ns == cover["mtime_ns"]


def _write_index(fs: pafs.FileSystem, index_dir: str, covers: list[dict], chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> _IndexFile:
    """An index file covering `covers`, of the (ids, files) pairs in `chunks`: each chunk is sorted
    here, and chunks come in increasing id ranges, so the file is sorted by id."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(index_dir, recursive=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = f"{index_dir}/{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    schema = INDEX_SCHEMA.with_metadata({_INDEX_META: json.dumps({"covers": covers}).encode()})
    rows = 0
    with pq.ParquetWriter(path, schema, filesystem=fs) as writer:
        for ids, files in chunks:
            order = np.lexsort((files, ids))
            table = pa.table({"id": pa.array(ids[order], pa.int64()), "file": pa.array(files[order], pa.int32())}, schema=schema)
            writer.write_table(table, row_group_size=id_ranges.ROW_GROUP_ROWS)
            rows += len(ids)
    return _IndexFile(path, rows, covers, np.ones(len(covers), dtype=bool))


def _compact(fs: pafs.FileSystem, index_dir: str, indexes: list[_IndexFile]) -> list[_IndexFile]:
    """Merge index files once there are more than MAX_INDEX_FILES, one id range at a time."""
    if len(indexes) <= MAX_INDEX_FILES:
        return indexes
    ordered = sorted(indexes, key=lambda f: f.rows)
    largest, rest = ordered[-1], ordered[:-1]
    merge = ordered if sum(f.rows for f in rest) >= largest.rows else rest
    covers: list[dict] = []
    position: dict[str, int] = {}
    remaps = []
    for index in merge:
        remap = np.full(len(index.covers), -1, dtype=np.int32)
        for i, (cover, ok) in enumerate(zip(index.covers, index.valid)):
            if ok:
                if cover["name"] not in position:
                    position[cover["name"]] = len(covers)
                    covers.append(cover)
                remap[i] = position[cover["name"]]
        remaps.append(remap)

    def chunks():
        for lo, hi in id_ranges.ranges(id_ranges.range_count(sum(f.rows for f in merge))):
            tables = id_ranges.read_ranges(fs, [f.path for f in merge], lo, hi, INDEX_SCHEMA.names)
            ids, files = [], []
            for table, remap in zip(tables, remaps):
                mapped = remap[table["file"].to_numpy()]
                ids.append(table["id"].to_numpy()[mapped >= 0])
                files.append(mapped[mapped >= 0])
            ids, files = np.concatenate(ids), np.concatenate(files)
            order = np.lexsort((files, ids))
            ids, files = ids[order], files[order]
            first = np.r_[True, (ids[1:] != ids[:-1]) | (files[1:] != files[:-1])]  # a file covered twice: once
            yield ids[first], files[first]

    merged = _write_index(fs, index_dir, covers, chunks())
    for index in merge:
        fs.delete_file(index.path)
    return [f for f in indexes if all(f is not m for m in merge)] + [merged]
