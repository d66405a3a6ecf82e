"""Exactly-once output: the committed data files *are* the checkpoint.

A Parquet file is readable only once its footer is written, so a file either holds complete,
committed rows or is an unfinished write (a job killed mid-write). Rows are faces, keyed by
(image id, face_index), and every row of an image carries the image's face_count; an image is
committed when all its face rows are (a block boundary may put an image's faces in two files, and
a kill may land between them). Before a run we
  1. delete unreadable data files (their rows were never committed and will be redone),
  2. drop duplicate (id, face_index) rows if any exist (a write retried after it had landed),
  3. remove the rows of images with only some of their faces committed (redone whole),
  4. remove the error rows of failures that can pass (pipeline/errors.py: fetch_failed,
     access_denied, throttled, model_failed) unless the run is told not to retry them: those
     images are redone, and their new rows never meet the old ones,
  5. collect the ids of complete images, which the new manifest excludes.
Rerunning the same command therefore processes exactly what is missing, whatever killed the
last run and whenever; a run with nothing new writes nothing. The same check runs after a run,
so a finished job is verified unique before it reports success.

Why not Ray Data's checkpointing: it is beta, keeps every id in driver memory, and its default
`delete_checkpoint_on_success=True` re-processes everything on scheduled reruns. Here the only
state is the output itself, which users can copy, prune or inspect without breaking resumes.
One writer per output folder at a time is enforced by storage/lease.py (a lease the run holds).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_parse.pipeline.errors import RETRYABLE
from batch_parse.pipeline.schema import STATUS_ERROR


@dataclass
class CommitState:
    ids: np.ndarray  # sorted ids of completely committed images
    files: list[str] = field(default_factory=list)
    removed_incomplete: list[str] = field(default_factory=list)
    duplicates_removed: int = 0  # rows
    incomplete_images: int = 0  # images with only some faces committed, whose rows were removed
    retry_cleared: Counter = field(default_factory=Counter)  # error_code -> retryable error rows removed to redo them
    retryable_kept: Counter = field(default_factory=Counter)  # error_code -> retryable error rows left (not retrying)


_REWRITE_PREFIX = "_rewrite-"


def data_files(fs: pafs.FileSystem, data_dir: str) -> list[str]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(data_dir, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted(
        i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet") and not i.base_name.startswith((".", "_"))
    )


# Rows of no_face / error images have a null face_index and face_count 0: they are the image's one row.
_NO_FACE = -1


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
    retryable = pc.and_(pc.equal(table["status"], STATUS_ERROR), pc.is_in(table["error_code"], pa.array(sorted(RETRYABLE))))
    codes = pc.if_else(retryable.fill_null(False), table["error_code"], None).to_numpy(zero_copy_only=False)
    return table["id"].to_numpy(), faces, table["face_count"].to_numpy().astype(np.int64), codes


def remove_partial_rewrites(fs: pafs.FileSystem, data_dir: str) -> int:
    """Delete the temporary files of rewrites a kill interrupted (the data file itself is intact)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(data_dir, allow_not_found=True))
    except FileNotFoundError:
        return 0
    partial = [i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(_REWRITE_PREFIX)]
    for path in partial:
        fs.delete_file(path)
    return len(partial)


def recover(fs: pafs.FileSystem, data_dir: str, retry_errors: bool = False) -> CommitState:
    """Bring an output folder to a consistent state and return what it holds.

    retry_errors: also remove retryable error rows (their images are then not done, and redone).
    """
    state = CommitState(ids=np.empty(0, dtype=np.int64))
    per_file: list[tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = []
    for path in data_files(fs, data_dir):
        keys = _read_keys(fs, path)
        if keys is None:
            fs.delete_file(path)
            state.removed_incomplete.append(path)
        else:
            per_file.append((path, keys))
    state.files = [p for p, _ in per_file]
    if not per_file:
        return state
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
    if drop.any():
        start = 0
        for path, keys in per_file:
            n = len(keys[0])
            file_drop = drop[start : start + n]
            start += n
            if file_drop.any():
                _rewrite_without(fs, path, ~file_drop)
        state.files = [p for p in state.files if fs.get_file_info(p).type == pafs.FileType.File]
    kept = ids[~drop]
    state.ids = np.unique(kept)
    return state


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


def _rewrite_without(fs: pafs.FileSystem, path: str, keep: np.ndarray) -> None:
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
