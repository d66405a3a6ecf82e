"""Exactly-once output: the committed data files *are* the checkpoint; a compact index says what they hold.

    OUTPUT/data/*.parquet                 the labels, one row per face (schema.py)
    OUTPUT/.batch-parse/index/*.parquet   per complete image and data file: (id, file, rows, faces), sorted
                                          by id; the file's metadata names the data files it covers (name,
                                          size, mtime, row count, retryable error rows)

A Parquet file is readable only once its footer is written, so a data file either holds complete,
committed rows or is an unfinished write. Rows are faces, keyed by (image id, face_index), and
every row of an image carries the image's face_count; an image is complete when its rows add up
to its face_count (one row for no_face and error images), wherever they are: a block boundary
may put an image's faces in two files.

A data file that an index lists with its current size and mtime is *covered*: its rows are not
read again. Everything else is read, together with the covered files that hold any image the
index cannot vouch for. The index cannot vouch for an image when
  - an index entry of it points at a file that changed or is gone since it was indexed (`touch`,
    a copy that dropped timestamps, an S3 object rewritten, a file truncated or deleted by hand),
  - its entries disagree with each other (rows adding up to more or less than its face_count:
    a duplicate written by a run that had lost its lease, or an index pruned by hand), or
  - it is in a data file no index covers (new rows that may repeat committed ones).
A covered file whose entries do not add up to its row count is read as if it were uncovered.
For those images only, over all the files read:
  1. unreadable files are deleted (an unfinished write: their rows were never committed),
  2. duplicate (id, face_index) rows are dropped, the copy in a covered file kept,
  3. the rows of images with only some of their faces present are removed (the image is redone),
  4. retryable error rows (output/errors.py) are removed when the run retries them;
then what was read or rewritten is *sealed*: a new index file covers it, and index files that
still mention changed files are merged without them. Every other row of a file read is trusted:
the index vouched for its image. So a rerun converges to every image complete exactly once,
whatever was touched, copied, truncated, pruned or deleted; deleting the index is always safe
(every file is read once). A kill anywhere leaves files uncovered or entries stale, and the next
run checks them again: every step is idempotent.

Every delete, rewrite and index write is fenced on the run's lease (output/lease.py Lease.fence):
a run that lost its lease commits and seals nothing more. Valid Parquet files in data/ that are not
batch-parse output (no batch_parse metadata), human corrections (`batch-parse import` rows) and
files named .parquet that are not Parquet at all are left alone and reported, never deleted. A
file with our columns and our model's rows but without our metadata (pandas rewrote it) is ours
by its rows: its metadata is restored in place and it is checked like any uncovered file. Before
an uncovered file's rows count, the run's `check` compares its metadata's source and weights with
the run's (a data/ copied without its .batch-parse/ must not lend another corpus's labels).
Each index file carries a checksum of its entries and covers, checked on the audit's pass: an
index edited by hand, even to agree with itself, loses to the data (its files are read again).
torn_images() is the readers' side: images a reader would see only in part, for them to leave out.

The index is read one id range at a time (storage/id_ranges.py), so memory holds one range however
long the history; index files are merged once there are more than MAX_INDEX_FILES.

Why not Ray Data's checkpointing: it is beta, keeps every id in driver memory, and its default
`delete_checkpoint_on_success=True` re-processes everything on scheduled reruns. Here the only
state is the output itself, which users can copy, prune or inspect without breaking resumes.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_parse.output.errors import RETRYABLE
from batch_parse.output.schema import (CORRECTION_FIELDS, KEY_COLUMNS, LABEL_SOURCE_HUMAN, METADATA_KEY, ROWS_OF_OURS,
                                      STATUS_ERROR, model_version_of)
from batch_parse.storage import id_ranges

MAX_INDEX_FILES = 16
SCAN_THREADS = 8  # data files read at once (S3 GETs overlap, Parquet decodes without the GIL)
INDEX_FORMAT = 2  # 2: entries carry rows and faces, covers carry row counts; older index files are dropped
INDEX_SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("file", pa.int32(), nullable=False),  # position in the covers list of the file's metadata
    pa.field("rows", pa.int32(), nullable=False),  # rows of this image in that file
    pa.field("faces", pa.int32(), nullable=False),  # the image's face_count (0: its one no_face/error row)
])  # fmt: skip
_INDEX_META = b"batch_parse_index"
# A digest of an index file's entries and covers, written at close: an index edited by hand (even
# to agree with itself: an image's entries removed and its file's row count lowered to match) no
# longer matches it, and loses to the data (its files are read again). Index files without one
# (written before it existed) are trusted as before.
_CHECKSUM_META = b"batch_parse_index_checksum"
_REWRITE_PREFIX = "_rewrite-"
# Rows of no_face / error images have a null face_index and face_count 0: they are the image's one row.
_NO_FACE = -1
_KEY_COLUMNS = list(KEY_COLUMNS)

Fence = Callable[[], None]
FileCheck = Callable[[str, dict], None]


def _unfenced() -> None:
    """Tests and tools that work on an output no run holds."""


@dataclass(frozen=True)
class DataFile:
    path: str
    name: str  # relative to the data folder: what an index records
    size: int
    mtime_ns: int | None

    def cover(self, rows: int, retryable: Counter | None = None) -> dict:
        return {"name": self.name, "size": self.size, "mtime_ns": self.mtime_ns, "rows": int(rows),
                "retryable": dict(retryable or {})}


@dataclass(eq=False)
class _IndexFile:
    path: str
    rows: int
    covers: list[dict]
    valid: np.ndarray  # per covers position: the entries vouch for their images
    stale: np.ndarray  # per covers position: the file changed or is gone, and no newer index covers it
    checksum: int | None = None  # _checksum of its entries and covers as written; None: an older index file


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
        tables = id_ranges.read_ranges(self.fs, [f.path for f in self.files], lo, hi, ["id", "file"])
        ids = [t["id"].to_numpy()[f.valid[t["file"].to_numpy()]] for f, t in zip(self.files, tables) if t.num_rows]
        if len(ids) == 1:
            return ids[0]  # an index file is sorted by id
        # np.sort, not np.unique: numpy 2's hashing unique took 0.6 s per million ids here, sort 0.02 s.
        return np.sort(np.concatenate(ids)) if ids else np.empty(0, dtype=np.int64)


@dataclass
class CommitState:
    index: CommittedIndex  # what is committed (complete images), for the manifest to leave out
    files: list[str] = field(default_factory=list)  # data files, all of them
    scanned: int = 0  # data files whose rows were read
    removed_incomplete: list[str] = field(default_factory=list)  # unfinished data files deleted
    duplicates_removed: int = 0  # rows
    incomplete_images: int = 0  # images with only some faces present, whose rows were removed
    changed_files: int = 0  # indexed data files found changed or gone (touched, copied, truncated, deleted)
    unvouched_images: int = 0  # images whose index entries disagreed (duplicates or missing rows)
    edited_index_files: int = 0  # index files whose entries or covers no longer match their checksum
    foreign: list[str] = field(default_factory=list)  # valid Parquet files in data/ that are not ours (left alone)
    corrections: list[str] = field(default_factory=list)  # human corrections (batch-parse import rows) in data/ (left alone)
    not_parquet: list[str] = field(default_factory=list)  # *.parquet files in data/ that are not Parquet at all (left alone)
    adopted: list[str] = field(default_factory=list)  # our rows whose file lost our metadata: checked, metadata restored
    retry_cleared: Counter = field(default_factory=Counter)  # error_code -> retryable error rows removed to redo them
    retryable_kept: Counter = field(default_factory=Counter)  # error_code -> retryable error rows left (not retrying)
    template: _Template | None = None  # where an adopted file's schema and metadata come from
    check: FileCheck | None = None  # recover's `check`


@dataclass
class _Keys:
    """The key columns of one data file's rows."""

    ids: np.ndarray
    faces: np.ndarray  # face_index, _NO_FACE for an image's one no_face/error row
    counts: np.ndarray  # face_count
    codes: np.ndarray  # retryable error code, or None
    adopted: bool = False  # our columns and rows, but not our metadata (rewritten by pandas & co): restore it
    meta: dict | None = None  # the file's batch_parse metadata (None for an adopted file)


def data_files(fs: pafs.FileSystem, data_dir: str) -> list[str]:
    return sorted(d.path for d in _data_files(fs, data_dir).values())


def _data_files(fs: pafs.FileSystem, data_dir: str) -> dict[str, DataFile]:
    infos = _listing(fs, data_dir, recursive=True)
    return {
        d.name: d
        for d in (DataFile(i.path, i.path[len(data_dir) + 1 :], i.size, i.mtime_ns) for i in infos)
        if d.path.endswith(".parquet") and not any(part.startswith((".", "_")) for part in d.name.split("/"))
    }


def _listing(fs: pafs.FileSystem, folder: str, recursive: bool = False) -> list[pafs.FileInfo]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=recursive, allow_not_found=True))
    except FileNotFoundError:
        return []
    return [i for i in infos if i.type == pafs.FileType.File]


def remove_partial_rewrites(fs: pafs.FileSystem, data_dir: str, fence: Fence = _unfenced) -> int:
    """Delete the temporary files of rewrites a kill interrupted (the data file itself is intact)."""
    partial = [i.path for i in _listing(fs, data_dir) if i.base_name.startswith(_REWRITE_PREFIX)]
    if partial:
        fence()
    for path in partial:
        fs.delete_file(path)
    return len(partial)


def recover(fs: pafs.FileSystem, data_dir: str, index_dir: str, retry_errors: bool = False,
            fence: Fence = _unfenced, schema: pa.Schema | None = None, check: FileCheck | None = None) -> CommitState:
    """Bring an output to a consistent state, seal what was checked, and return what it holds.

    retry_errors: also remove retryable error rows (their images are then not done, and redone).
    fence: called before every change to the output; raises if the run no longer holds its lease.
    schema: the run's output schema, for a file of our rows that lost its metadata when no other
    data file has it (normally another data file's schema is used: same output, same model).
    check: called with (name in data/, metadata) of every data file no index covers before its rows
    count; raises (ValueError) to stop the run with nothing changed (another source's or model's file).
    """
    data = _data_files(fs, data_dir)
    state = CommitState(index=CommittedIndex(fs))
    state.template = _Template(fs, data, schema)
    state.check = check
    indexes = _read_indexes(fs, index_dir, data, fence)
    state.changed_files = sum(int(f.stale.sum()) for f in indexes)

    covered = {c["name"] for f in indexes for c, ok in zip(f.covers, f.valid) if ok}
    keys = _read_all_keys(fs, [d for name, d in sorted(data.items()) if name not in covered], fence, state)
    uncovered_ids = np.unique(np.concatenate([k.ids for k in keys.values()])) if keys else np.empty(0, np.int64)

    # Which covered files hold images the index cannot vouch for; covered files whose entries do not
    # add up to their row count, and every file an index file edited since written covers, are not
    # covered after all (read in full, their images suspect): an index that disagrees loses to the data.
    distrusted: set[str] = set()
    while True:
        audit = _audit(fs, indexes, uncovered_ids)
        edited = [f for f, digest in zip(indexes, audit.checksums)
                  if f.checksum is not None and digest != f.checksum and f.path not in distrusted]
        distrusted.update(f.path for f in edited)
        state.edited_index_files += len(edited)
        miscounted = [(f, i) for f, counts in zip(indexes, audit.file_rows) for i in np.flatnonzero(f.valid)
                      if f in edited or counts[i] != f.covers[i].get("rows", -1)]
        if not miscounted:
            break
        for f, i in miscounted:
            f.valid[i], f.stale[i] = False, True
        more = [data[f.covers[i]["name"]] for f, i in miscounted if f.covers[i]["name"] in data]
        keys.update(_read_all_keys(fs, more, fence, state))
        uncovered_ids = np.unique(np.concatenate([uncovered_ids, *(keys[d.name].ids for d in more if d.name in keys)]))
        state.changed_files += sum(f not in edited for f, _ in miscounted)  # an edited index is said apart
    state.unvouched_images = audit.unvouched

    covered_covers = {c["name"]: c for f in indexes for c, ok in zip(f.covers, f.valid) if ok}
    pulled = set(audit.pulled)
    if retry_errors:
        pulled.update(name for name, c in covered_covers.items() if c.get("retryable"))
    else:
        for c in covered_covers.values():
            state.retryable_kept.update(c.get("retryable") or {})
    pulled -= set(keys)
    pulled_keys = _read_all_keys(fs, [data[name] for name in sorted(pulled) if name in data], fence, state)

    suspects = np.unique(np.concatenate([uncovered_ids, audit.suspects]))
    # Covered files first: of two copies of a row, the one the index already counts is kept.
    judged_files = [(data[n], k, True) for n, k in sorted(pulled_keys.items())] + [(data[n], k, False) for n, k in sorted(keys.items())]
    sealed = _judge(fs, judged_files, suspects, retry_errors, covered_covers, fence, state)

    if state.scanned or state.changed_files:  # something was read: seal it, and drop what the index no longer holds
        data = _data_files(fs, data_dir)
        files = [(data[name], entries, kept) for name, (entries, kept) in sorted(sealed.items()) if name in data]
        if files:
            fence()
            indexes.append(_write_index(fs, index_dir, [d.cover(_len_rows(e), kept) for d, e, kept in files],
                                        [_stack_entries([e for _, e, _ in files])]))
        indexes = _mark(fs, indexes, data)
        indexes = _compact(fs, index_dir, indexes, fence, force=any((~f.valid).any() for f in indexes))
    state.index = CommittedIndex(fs, _compact(fs, index_dir, indexes, fence))
    state.files = sorted(d.path for d in data.values())
    return state


def _len_rows(entries: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:
    return int(entries[1].sum())


@dataclass
class _Audit:
    suspects: np.ndarray  # ids the index cannot vouch for
    pulled: set[str]  # covered data files holding a suspect or an uncovered id
    file_rows: list[np.ndarray]  # per index file, per cover: rows its valid entries add up to
    unvouched: int  # images whose valid entries disagree
    checksums: list[int]  # per index file: _checksum of its entries and covers as read now


def _audit(fs: pafs.FileSystem, indexes: list[_IndexFile], uncovered_ids: np.ndarray) -> _Audit:
    """One pass over the index, one id range at a time: what it cannot vouch for, and where those images are."""
    suspects, pulled, unvouched = [], set(), 0
    file_rows = [np.zeros(len(f.covers), dtype=np.int64) for f in indexes]
    names = [np.array([c["name"] for c in f.covers], dtype=object) for f in indexes]
    total = sum(f.rows for f in indexes)
    sums = [0 for _ in indexes]
    for lo, hi in id_ranges.ranges(id_ranges.range_count(total)) if indexes else []:
        tables = id_ranges.read_ranges(fs, [f.path for f in indexes], lo, hi, INDEX_SCHEMA.names)
        ids, rows, faces, where, bad = [], [], [], [], []
        for k, (f, t) in enumerate(zip(indexes, tables)):
            if not t.num_rows:
                continue
            sums[k] = (sums[k] + _entries_sum(*(t[name].to_numpy() for name in INDEX_SCHEMA.names))) % 2**64
            pos = t["file"].to_numpy()
            valid, stale = f.valid[pos], f.stale[pos]
            bad.append(t["id"].to_numpy()[stale])
            file_rows[k] += np.bincount(pos[valid], weights=t["rows"].to_numpy()[valid], minlength=len(f.covers)).astype(np.int64)
            ids.append(t["id"].to_numpy()[valid])
            rows.append(t["rows"].to_numpy()[valid])
            faces.append(t["faces"].to_numpy()[valid])
            where.append(names[k][pos[valid]])
        if not ids:
            continue
        ids, rows, faces, where = (np.concatenate(a) for a in (ids, rows, faces, where))
        order = np.argsort(ids, kind="stable")
        ids, rows, faces, where = ids[order], rows[order], faces[order], where[order]
        disagree = np.empty(0, np.int64)
        if len(ids):
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            total_rows = np.add.reduceat(rows, starts)
            high, low = np.maximum.reduceat(faces, starts), np.minimum.reduceat(faces, starts)
            disagree = ids[starts][(high != low) | (total_rows != np.maximum(high, 1))]
        unvouched += len(disagree)
        range_suspects = np.unique(np.concatenate([*bad, disagree])) if bad else disagree
        suspects.append(range_suspects)
        wanted = np.isin(ids, range_suspects) | id_ranges.is_member(ids, uncovered_ids)
        pulled.update(where[wanted].tolist())
    found = np.unique(np.concatenate(suspects)) if suspects else np.empty(0, np.int64)
    checksums = [_checksum(s, f.covers) for s, f in zip(sums, indexes)]
    return _Audit(found.astype(np.int64), pulled, file_rows, unvouched, checksums)


def _entries_sum(ids: np.ndarray, files: np.ndarray, rows: np.ndarray, faces: np.ndarray) -> int:
    """An order-free digest of index entries (summed per id range as the audit reads them): each entry
    mixed by splitmix64's finaliser, the mixes added mod 2^64. Not a defence against forgery, a
    check that what a person or a tool rewrote is what batch-parse wrote."""
    x = (ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + files.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
         + rows.astype(np.uint64) * np.uint64(0x165667B19E3779F9) + faces.astype(np.uint64) * np.uint64(0x27D4EB2F165667C5))
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return int(x.sum(dtype=np.uint64))  # numpy arrays wrap mod 2^64 (its scalars would warn: sums go through int)


def _checksum(entries: int, covers: list[dict]) -> int:
    digest = hashlib.blake2b(json.dumps(covers, sort_keys=True).encode(), digest_size=8).digest()
    return int(entries) ^ int.from_bytes(digest, "big")


def _read_all_keys(fs: pafs.FileSystem, files: list[DataFile], fence: Fence, state: CommitState) -> dict[str, _Keys]:
    """Key columns of `files`; unfinished files are deleted (fenced); foreign files, human corrections
    and files that are not Parquet at all are noted and left alone."""
    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:
        found = list(pool.map(lambda d: _read_keys(fs, d.path), files))
    state.scanned += sum(not isinstance(keys, str) for keys in found)  # unfinished ones were read too
    if state.check is not None:  # before anything is changed: a file of another corpus stops the run here
        for d, keys in zip(files, found):
            if isinstance(keys, _Keys) and keys.meta is not None:
                state.check(d.name, keys.meta)
    out = {}
    for d, keys in zip(files, found):
        if keys is None:
            fence()
            fs.delete_file(d.path)
            state.removed_incomplete.append(d.path)
        elif keys == FOREIGN:
            state.foreign.append(d.path)
        elif keys == CORRECTIONS:
            state.corrections.append(d.path)
        elif keys == NOT_PARQUET:
            state.not_parquet.append(d.path)
        elif keys.adopted and not _adopt(fs, d.path, state.template, fence):
            state.foreign.append(d.path)  # another model's rows, or columns we cannot restore: not ours to change
        else:
            if keys.adopted:
                state.adopted.append(d.path)
            out[d.name] = keys
    return out


@dataclass
class _Template:
    """The schema (with our metadata) a file of our rows gets back: another data file's, else the run's."""

    fs: pafs.FileSystem
    data: dict[str, DataFile]
    fallback: pa.Schema | None
    found: pa.Schema | None = None

    def schema(self) -> pa.Schema | None:
        if self.found is None:
            for d in sorted(self.data.values(), key=lambda d: d.name):
                try:
                    with self.fs.open_input_file(d.path) as f:
                        schema = pq.read_schema(f)
                except (pa.ArrowInvalid, OSError):
                    continue
                meta = schema.metadata or {}
                if METADATA_KEY in meta and not _is_corrections(meta, schema.names):
                    self.found = schema
                    break
            else:
                self.found = self.fallback
        return self.found


def _adopt(fs: pafs.FileSystem, path: str, template: _Template | None, fence: Fence) -> bool:
    """Give a file of our rows that lost our metadata (pandas `to_parquet`, polars, DuckDB) its schema
    and metadata back, in place; False (left alone) when its rows are another model's or its columns
    do not cast to ours. Every row and every extra column of the user's is kept."""
    schema = template.schema() if template is not None else None
    if schema is None:
        return False
    meta = json.loads(schema.metadata[METADATA_KEY])
    version = model_version_of(meta)
    with fs.open_input_file(path) as f:
        table = pq.read_table(f)
    if pc.any(pc.not_equal(table["model_version"], version)).as_py():
        return False
    try:
        restored = _restore(table, schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    fence()
    _replace(fs, path, restored)
    return True


def _restore(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in our schema: our columns cast to our types (missing ones null), the user's own columns
    kept after them; pandas' index columns dropped (row labels, not data)."""
    n = table.num_rows
    columns = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(n, f.type) for f in schema]
    fields = list(schema)
    for name in table.column_names:
        if name not in schema.names and not name.startswith("__index_level_"):
            columns.append(table[name])
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))


FOREIGN, CORRECTIONS, NOT_PARQUET = "foreign", "corrections", "not_parquet"
# What marks a row as ours when its file lost our metadata (pandas, polars, DuckDB rewrites keep columns, not it).
_PARQUET_MAGIC = b"PAR1"


def _read_keys(fs: pafs.FileSystem, path: str) -> _Keys | str | None:
    """The key columns of a data file; None if it is an unfinished write (starts as Parquet, no valid
    footer). Left alone, by what they are: FOREIGN, a complete Parquet file that batch-parse did not
    write; CORRECTIONS, human rows `batch-parse import` wrote (label_source = human); NOT_PARQUET, a
    file that does not even start as Parquet (a user's file named .parquet: never an unfinished write
    of ours). A file with our columns but without our metadata (rewritten by pandas & co) is ours
    by its rows: its keys are read, marked `adopted`."""
    try:
        with fs.open_input_file(path) as f:
            try:
                parquet = pq.ParquetFile(f)
            except pa.ArrowInvalid:
                # No footer: an unfinished write of ours starts with Parquet's magic (written first);
                # anything else is a user's file that merely has the name.
                f.seek(0)
                head = f.read(len(_PARQUET_MAGIC))
                if head and head != _PARQUET_MAGIC[: len(head)]:
                    return NOT_PARQUET
                raise
            schema = parquet.schema_arrow
            metadata = schema.metadata or {}
            if _is_corrections(metadata, schema.names):
                return CORRECTIONS
            adopted = METADATA_KEY not in metadata
            if any(c not in schema.names for c in (ROWS_OF_OURS if adopted else _KEY_COLUMNS)):
                return FOREIGN
            table = parquet.read(columns=_KEY_COLUMNS)
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowInvalid) and "Parquet" not in str(exc):
            raise  # a storage error is not evidence of an unfinished write: never delete on it
        return None
    try:
        faces = table["face_index"].fill_null(_NO_FACE).to_numpy().astype(np.int64)
        codes = pc.if_else(_retryable_mask(table), table["error_code"], None).to_numpy(zero_copy_only=False)
        keys = _Keys(table["id"].to_numpy().astype(np.int64), faces, table["face_count"].to_numpy().astype(np.int64), codes, adopted,
                     None if adopted else _json_or_none(metadata[METADATA_KEY]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError, ValueError):
        return FOREIGN  # our column names, other types: not rows we can vouch for
    return keys


def _json_or_none(raw: bytes) -> dict | None:
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def _is_corrections(metadata: dict, names: list[str]) -> bool:
    """Rows `batch-parse import` wrote: its metadata says label_source human, or (metadata lost) its columns do."""
    raw = metadata.get(METADATA_KEY)
    if raw is not None:
        try:
            return json.loads(raw).get("label_source") == LABEL_SOURCE_HUMAN
        except (ValueError, AttributeError):
            return False
    return all(f.name in names for f in CORRECTION_FIELDS)


def _judge(fs: pafs.FileSystem, files: list[tuple[DataFile, _Keys, bool]], suspects: np.ndarray, retry_errors: bool,
           covers: dict[str, dict], fence: Fence, state: CommitState) -> dict[str, tuple[tuple, Counter]]:
    """Steps 2-4 for the rows of suspect images in `files` (all rows of uncovered files are suspect).

    Returns, per file to seal (uncovered or rewritten), its index entries and the retryable rows it keeps.
    """
    if not files:
        return {}
    ids = np.concatenate([k.ids for _, k, _ in files])
    faces = np.concatenate([k.faces for _, k, _ in files])
    counts = np.concatenate([k.counts for _, k, _ in files])
    codes = np.concatenate([k.codes for _, k, _ in files])
    judged = id_ranges.is_member(ids, suspects)
    drop = np.zeros(len(ids), dtype=bool)
    sub = np.flatnonzero(judged)
    sub_drop, state.duplicates_removed, incomplete_ids = rows_to_drop(ids[sub], faces[sub], counts[sub])
    drop[sub[sub_drop]] = True
    state.incomplete_images = len(incomplete_ids)
    retryable = np.not_equal(codes, None) & ~drop
    uncovered_rows = np.concatenate([np.full(len(k.ids), not was_covered) for _, k, was_covered in files])
    # Retryable rows of covered files were counted from their covers already (recover).
    (state.retry_cleared if retry_errors else state.retryable_kept).update(codes[retryable & (uncovered_rows | retry_errors)].tolist())
    if retry_errors:
        drop |= retryable
    out, start = {}, 0
    for d, k, was_covered in files:
        n = len(k.ids)
        file_drop, file_codes = drop[start : start + n], codes[start : start + n]
        start += n
        if was_covered and not file_drop.any():
            continue  # nothing changed: its cover still vouches for it
        if file_drop.any():
            fence()
            _rewrite_without(fs, d.path, ~file_drop)
        kept = ~file_drop
        if kept.any():
            out[d.name] = (_entries(k.ids[kept], k.counts[kept]), Counter(c for c in file_codes[kept] if c is not None))
    return out


def _entries(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, rows, faces) per image of one file's rows, sorted by id."""
    order = np.argsort(ids, kind="stable")
    ids, counts = ids[order], counts[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return ids[starts], np.diff(np.r_[starts, len(ids)]), counts[starts]


def _stack_entries(per_file: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    ids = np.concatenate([e[0] for e in per_file])
    files = np.concatenate([np.full(len(e[0]), i, np.int32) for i, e in enumerate(per_file)])
    return ids, files, np.concatenate([e[1] for e in per_file]), np.concatenate([e[2] for e in per_file])


def _retryable_mask(table: pa.Table) -> pa.ChunkedArray:
    mask = pc.and_(pc.equal(table["status"], STATUS_ERROR), pc.is_in(table["error_code"], pa.array(sorted(RETRYABLE))))
    return mask.fill_null(False)


def rows_to_drop(ids: np.ndarray, faces: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Rows (in file order) to delete: repeats of an (id, face) seen earlier, and every row of an
    image whose rows do not add up to its face_count. Returns (mask, duplicates, incomplete ids)."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=bool), 0, np.empty(0, np.int64)
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


def _rewrite_without(fs: pafs.FileSystem, path: str, keep: np.ndarray) -> None:
    with fs.open_input_file(path) as f:
        table = pq.read_table(f)
    kept = table.filter(pa.array(keep))
    if kept.num_rows == 0:
        fs.delete_file(path)
        return
    _replace(fs, path, kept)


def _replace(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    # Write beside, then replace: the file is never half-written under its committed name.
    tmp = path.rsplit("/", 1)[0] + "/" + _REWRITE_PREFIX + path.rsplit("/", 1)[1]
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


# --- index files ---------------------------------------------------------------------------------


def _read_indexes(fs: pafs.FileSystem, index_dir: str, data: dict[str, DataFile], fence: Fence,
                  delete_unusable: bool = True) -> list[_IndexFile]:
    """The index files, each cover marked valid, stale or superseded; unreadable (half-written) or
    older-format index files are deleted (unless not `delete_unusable`: read_committed), and the
    files they covered are then simply read again."""
    paths = sorted(i.path for i in _listing(fs, index_dir) if i.path.endswith(".parquet"))

    def footer(path: str) -> tuple[str, int, list[dict]] | None:
        try:
            with fs.open_input_file(path) as f:
                meta = pq.read_metadata(f)
            record = json.loads(meta.metadata[_INDEX_META])
            if record.get("format") != INDEX_FORMAT or meta.schema.to_arrow_schema().names != INDEX_SCHEMA.names:
                return None
            checksum = meta.metadata.get(_CHECKSUM_META)
            return path, meta.num_rows, record["covers"], None if checksum is None else int(checksum, 16)
        except (pa.ArrowInvalid, KeyError, TypeError, ValueError, AttributeError):
            return None  # killed while it was written, or written by an older batch-parse

    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:
        footers = list(pool.map(footer, paths))
    unusable = [path for path, found in zip(paths, footers) if found is None and delete_unusable]
    if unusable:
        fence()
    for path in unusable:
        fs.delete_file(path)
    indexes = [_IndexFile(path, rows, covers, np.ones(len(covers), bool), np.zeros(len(covers), bool), checksum)
               for path, rows, covers, checksum in filter(None, footers)]
    return _mark(fs, indexes, data, delete=False)


def _mark(fs: pafs.FileSystem, indexes: list[_IndexFile], data: dict[str, DataFile], delete: bool = True) -> list[_IndexFile]:
    """Mark each cover valid (its file is there unchanged, and no newer index covers it), superseded
    (a newer index covers the file) or stale (the file changed or is gone since)."""
    newest: dict[str, tuple[int, int]] = {}  # data file name -> (index position, cover position) of its newest valid cover
    for k, index in enumerate(indexes):  # in path order = time order (names start with a UTC stamp)
        for i, cover in enumerate(index.covers):
            if _unchanged(cover, data.get(cover["name"])):
                newest[cover["name"]] = (k, i)
    for k, index in enumerate(indexes):
        index.valid = np.array([newest.get(c["name"]) == (k, i) for i, c in enumerate(index.covers)], dtype=bool)
        index.stale = np.array([c["name"] not in newest for c in index.covers], dtype=bool)
    if not delete:
        return indexes
    kept = []
    for index in indexes:
        if index.valid.any() or index.stale.any():
            kept.append(index)
        else:
            fs.delete_file(index.path)  # every file it covers has a newer cover
    return kept


def _unchanged(cover: dict, d: DataFile | None) -> bool:
    return d is not None and d.size == cover["size"] and d.mtime_ns == cover["mtime_ns"]


def _write_index(fs: pafs.FileSystem, index_dir: str, covers: list[dict], chunks: Iterable[tuple[np.ndarray, ...]]) -> _IndexFile:
    """An index file covering `covers`, of the (ids, files, rows, faces) arrays in `chunks`: each chunk
    is sorted here, and chunks come in increasing id ranges, so the file is sorted by id."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(index_dir, recursive=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = f"{index_dir}/{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    schema = INDEX_SCHEMA.with_metadata({_INDEX_META: json.dumps({"format": INDEX_FORMAT, "covers": covers}).encode()})
    rows, entries = 0, 0
    with pq.ParquetWriter(path, schema, filesystem=fs) as writer:
        for ids, files, counts, faces in chunks:
            order = np.lexsort((files, ids))
            table = pa.table([pa.array(a[order], f.type) for a, f in zip((ids, files, counts, faces), INDEX_SCHEMA)], schema=schema)
            writer.write_table(table, row_group_size=id_ranges.ROW_GROUP_ROWS)
            rows += len(ids)
            entries = (entries + _entries_sum(*(table[name].to_numpy() for name in INDEX_SCHEMA.names))) % 2**64
        checksum = _checksum(entries, covers)
        writer.add_key_value_metadata({_CHECKSUM_META: f"{checksum:016x}".encode()})
    n = len(covers)
    return _IndexFile(path, rows, covers, np.ones(n, bool), np.zeros(n, bool), checksum)


def _compact(fs: pafs.FileSystem, index_dir: str, indexes: list[_IndexFile], fence: Fence, force: bool = False) -> list[_IndexFile]:
    """Merge index files, one id range at a time, keeping only valid covers: once there are more than
    MAX_INDEX_FILES (all but the largest, unless the others together outweigh it), or, with `force`,
    every index file that mentions a cover no longer valid."""
    if force:
        merge = [f for f in indexes if (~f.valid).any()]
        if not merge:
            return indexes
    elif len(indexes) <= MAX_INDEX_FILES:
        return indexes
    else:
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
            parts = []
            for table, remap in zip(tables, remaps):
                mapped = remap[table["file"].to_numpy()]
                keep = mapped >= 0
                parts.append((table["id"].to_numpy()[keep], mapped[keep], table["rows"].to_numpy()[keep], table["faces"].to_numpy()[keep]))
            yield tuple(np.concatenate([p[j] for p in parts]) for j in range(4))

    fence()
    merged = [_write_index(fs, index_dir, covers, chunks())] if covers else []
    for index in merge:
        fs.delete_file(index.path)
    return [f for f in indexes if all(f is not m for m in merge)] + merged


# --- a read-only view: `run --dry-run` and `progress` --------------------------------------------


@dataclass
class CommittedView:
    """What an output holds, read without changing it: nothing is deleted, repaired or sealed.

    recover() decides; this view is what it would start from. Complete images are the index's (its
    valid covers) plus those complete in the data files no index covers as they are now (a running
    or killed run's new files, files changed since they were indexed), which are read (their key
    columns only). What it cannot know without recover's cross-checks: duplicates and images whose
    faces span a covered and an uncovered file (counted as not done here).
    """

    index: CommittedIndex  # the valid covers' images
    data_files: int = 0
    uncovered_files: int = 0  # data files no index covers as they are now (read here)
    unfinished_files: int = 0  # of those, no footer (a kill mid-write: the next run deletes them)
    foreign_files: int = 0  # valid Parquet in data/ batch-parse did not write (left alone)
    uncovered_done: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # sorted ids complete in uncovered files
    retryable: Counter = field(default_factory=Counter)  # error_code -> retryable error rows, all data files
    retryable_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # sorted ids of those rows' images
    staged_files: int = 0  # complete files in staging/, not yet published into data/
    staged_unfinished: int = 0  # staged files without a footer (being written, or left by a kill)
    staged_rows: int = 0
    staged_done: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # sorted ids complete in staged files

    def ids_in_range(self, lo: int, hi: int) -> np.ndarray:
        """Sorted ids complete in data/ (index or uncovered files) with lo <= id < hi (ids may repeat)."""
        extra = self.uncovered_done[(self.uncovered_done >= lo) & (self.uncovered_done < hi)]
        return np.sort(np.concatenate([self.index.ids_in_range(lo, hi), extra]))

    @property
    def size(self) -> int:
        return self.index.size + len(self.uncovered_done)


def read_committed(fs: pafs.FileSystem, data_dir: str, index_dir: str, staging_root: str | None = None,
                   check: FileCheck | None = None) -> CommittedView:
    """The output's committed images, read-only (see CommittedView); with `staging_root`, its staged
    files too; `check` as recover's, on the data files no index covers."""
    data = _data_files(fs, data_dir)
    indexes = _read_indexes(fs, index_dir, data, _unfenced, delete_unusable=False)
    covers = {c["name"]: c for f in indexes for c, ok in zip(f.covers, f.valid) if ok}
    view = CommittedView(CommittedIndex(fs, indexes), data_files=len(data))
    uncovered = [d for name, d in sorted(data.items()) if name not in covers]
    with_retryable = [data[name] for name, c in sorted(covers.items()) if c.get("retryable")]
    keys = _read_keys_quietly(fs, uncovered + with_retryable)
    if check is not None:
        for d in uncovered:
            if isinstance(keys[d.path], _Keys) and keys[d.path].meta is not None:
                check(d.name, keys[d.path].meta)
    view.uncovered_files = len(uncovered)
    view.unfinished_files = sum(keys[d.path] is None for d in uncovered)
    view.foreign_files = sum(isinstance(keys[d.path], str) for d in uncovered)
    read = [keys[d.path] for d in uncovered if isinstance(keys[d.path], _Keys)]
    view.uncovered_done = _complete_ids(read)
    retryable = [k for k in (keys[d.path] for d in uncovered + with_retryable) if isinstance(k, _Keys)]
    codes = np.concatenate([k.codes for k in retryable]) if retryable else np.empty(0, object)
    ids = np.concatenate([k.ids for k in retryable]) if retryable else np.empty(0, np.int64)
    view.retryable = Counter(codes[np.not_equal(codes, None)].tolist())
    view.retryable_ids = np.unique(ids[np.not_equal(codes, None)]).astype(np.int64)
    if staging_root is not None:
        staged = [DataFile(i.path, i.path, i.size, i.mtime_ns) for i in _listing(fs, staging_root, recursive=True)
                  if i.path.endswith(".parquet")]
        staged_keys = _read_keys_quietly(fs, staged)
        complete = [k for k in staged_keys.values() if isinstance(k, _Keys)]
        view.staged_files, view.staged_unfinished = len(complete), sum(k is None for k in staged_keys.values())
        view.staged_rows = sum(len(k.ids) for k in complete)
        view.staged_done = _complete_ids(complete)
    return view


def torn_images(fs: pafs.FileSystem, data_dir: str, index_dir: str) -> np.ndarray:
    """Sorted ids of the images a reader of `data_dir` would see only in part, read-only.

    A run publishes its files into data/ one at a time, and a kill between two moves leaves an
    image with some of its faces in data/ and the rest in staging until the next run (which
    removes it and labels it again). Such rows are in files no index covers yet, so only those
    are read (their key columns); a settled output costs the index footers alone.
    """
    data = _data_files(fs, data_dir)
    if not data:
        return np.empty(0, np.int64)
    indexes = _read_indexes(fs, index_dir, data, _unfenced, delete_unusable=False)
    covered = {c["name"] for f in indexes for c, ok in zip(f.covers, f.valid) if ok}
    keys = [k for k in _read_keys_quietly(fs, [d for n, d in sorted(data.items()) if n not in covered]).values()
            if isinstance(k, _Keys)]
    if not keys:
        return np.empty(0, np.int64)
    ids, faces, counts = (np.concatenate([getattr(k, a) for k in keys]) for a in ("ids", "faces", "counts"))
    _, _, incomplete = rows_to_drop(ids, faces, counts)
    if not incomplete.size or not indexes:
        return np.sort(incomplete).astype(np.int64)
    # An image may also have rows in covered files (a file touched since indexed, beside an untouched
    # one): add the rows the index vouches for there before calling it torn.
    rows = Counter(ids[np.isin(ids, incomplete)].tolist())
    for f in indexes:
        with fs.open_input_file(f.path) as stream:
            t = pq.read_table(stream, columns=["id", "file", "rows"], filters=[("id", "in", incomplete.tolist())])
        valid = f.valid[t["file"].to_numpy()]
        for i, r in zip(t["id"].to_numpy()[valid].tolist(), t["rows"].to_numpy()[valid].tolist()):
            rows[i] += r
    need = {i: max(int(c), 1) for i, c in zip(ids.tolist(), counts.tolist())}
    return np.array(sorted(i for i in incomplete.tolist() if rows[i] != need[i]), np.int64)


def _read_keys_quietly(fs: pafs.FileSystem, files: list[DataFile]) -> dict[str, _Keys | str | None]:
    """_read_keys of each file by path; a file gone meanwhile (published, rewritten) reads as unfinished."""

    def read(d: DataFile) -> _Keys | str | None:
        try:
            return _read_keys(fs, d.path)
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:
        return dict(zip((d.path for d in files), pool.map(read, files)))


def _complete_ids(keys: list[_Keys]) -> np.ndarray:
    """Sorted ids of the images whose rows in `keys` add up to their face_count."""
    if not keys:
        return np.empty(0, np.int64)
    ids = np.concatenate([k.ids for k in keys])
    _, _, incomplete = rows_to_drop(ids, np.concatenate([k.faces for k in keys]), np.concatenate([k.counts for k in keys]))
    found = np.unique(ids)
    return found[~np.isin(found, incomplete)].astype(np.int64)


# --- staged writes -------------------------------------------------------------------------------


def publish_staged(fs: pafs.FileSystem, staging: str, data_dir: str, fence: Fence = _unfenced,
                   writing: bool = False) -> tuple[int, int]:
    """Move the complete data files under `staging` into `data_dir`, each move fenced on the lease;
    delete the unfinished ones (no footer: their rows were never committed), unless the run is still
    `writing` them (a publish while the run labels). Returns (moved, deleted).

    A run's Ray workers write into its own staging folder, so nothing it writes is in the dataset
    until the run, still holding its lease, publishes it; leftover staging of a killed (or fenced
    off) run is published by the next run and then checked like any file no index covers.
    """
    moved = deleted = 0
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(data_dir, recursive=True)
    taken = set(_data_files(fs, data_dir))
    for info in sorted(_listing(fs, staging, recursive=True), key=lambda i: i.path):
        if not info.path.endswith(".parquet"):
            continue
        try:
            with fs.open_input_file(info.path) as f:
                pq.read_metadata(f)
            complete = True
        except pa.ArrowInvalid:
            complete = False
        except FileNotFoundError:
            continue  # published meanwhile by the run it belongs to
        if not complete and writing:
            continue  # a worker is writing it now
        fence()
        if not complete:
            fs.delete_file(info.path)
            deleted += 1
            continue
        name = info.base_name
        if name in taken:  # Ray names files by a write uuid: never seen, but never overwrite a committed file
            name = f"{uuid.uuid4().hex[:8]}-{name}"
        try:
            fs.move(info.path, f"{data_dir}/{name}")
        except FileNotFoundError:
            continue
        taken.add(name)
        moved += 1
    if not writing:
        _remove_empty_dirs(fs, staging)
    return moved, deleted


class Publisher:
    """Publishes a run's staged files into data/ every `every_s` seconds while it labels, so a long
    run's rows show up as it goes (and a kill loses nothing: the next run publishes the rest).
    Use as a context manager around the labelling; a lost lease stops it (the run's final, fenced
    publish then raises)."""

    def __init__(self, fs: pafs.FileSystem, staging: str, data_dir: str, fence: Fence, every_s: float = 10.0):
        import threading

        self.fs, self.staging, self.data_dir, self.fence, self.every_s = fs, staging, data_dir, fence, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batch-parse-publish", daemon=True)
        self.error: BaseException | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                publish_staged(self.fs, self.staging, self.data_dir, self.fence, writing=True)
            except Exception as exc:  # noqa: BLE001 - a blip or a lost lease: the final publish decides
                self.error = exc
                if type(exc).__name__ == "LeaseLost":
                    return

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _remove_empty_dirs(fs: pafs.FileSystem, folder: str) -> None:
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return
    if any(i.type == pafs.FileType.File for i in infos):
        return
    try:
        fs.delete_dir(folder)
    except OSError:
        pass
