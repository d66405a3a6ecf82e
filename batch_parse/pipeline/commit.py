"""Exactly-once output: the committed data files *are* the checkpoint.

A Parquet file is readable only once its footer is written, so a file either holds complete,
committed rows or is an unfinished write (a job killed mid-write). Before a run we
  1. delete unreadable data files (their rows were never committed and will be redone),
  2. drop duplicate ids if any exist (a write retried after it had already landed),
  3. collect the committed ids, which the new manifest excludes.
Rerunning the same command therefore processes exactly what is missing, whatever killed the
last run and whenever; a run with nothing new writes nothing. The same check runs after a run,
so a finished job is verified unique before it reports success.

Why not Ray Data's checkpointing: it is beta, keeps every id in driver memory, and its default
`delete_checkpoint_on_success=True` re-processes everything on scheduled reruns. Here the only
state is the output itself, which users can copy, prune or inspect without breaking resumes.
Limit: one writer per output folder at a time (runs on the same output must not overlap).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclass
class CommitState:
    ids: np.ndarray  # sorted committed ids
    files: list[str] = field(default_factory=list)
    removed_incomplete: list[str] = field(default_factory=list)
    duplicates_removed: int = 0


def data_files(fs: pafs.FileSystem, data_dir: str) -> list[str]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(data_dir, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted(
        i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet") and not i.base_name.startswith((".", "_"))
    )


def _read_ids(fs: pafs.FileSystem, path: str) -> np.ndarray | None:
    """The id column of a committed file, or None if the file is incomplete (no valid footer)."""
    try:
        with fs.open_input_file(path) as f:
            return pq.read_table(f, columns=["id"])["id"].to_numpy()
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowInvalid) and "Parquet" not in str(exc):
            raise  # a storage error is not evidence of an unfinished write: never delete on it
        return None


def recover(fs: pafs.FileSystem, data_dir: str) -> CommitState:
    """Bring an output folder to a consistent state and return what it holds."""
    state = CommitState(ids=np.empty(0, dtype=np.int64))
    per_file: list[tuple[str, np.ndarray]] = []
    for path in data_files(fs, data_dir):
        ids = _read_ids(fs, path)
        if ids is None:
            fs.delete_file(path)
            state.removed_incomplete.append(path)
        else:
            per_file.append((path, ids))
    seen: set[int] = set()
    all_ids = np.concatenate([ids for _, ids in per_file]) if per_file else np.empty(0, dtype=np.int64)
    if len(np.unique(all_ids)) != len(all_ids):
        # Rare path: keep each id's first occurrence (files in name order), rewrite the others.
        for path, ids in per_file:
            dup = np.array([int(i) in seen for i in ids])
            seen.update(int(i) for i in ids)
            if dup.any():
                _rewrite_without(fs, path, ~dup)
                state.duplicates_removed += int(dup.sum())
        all_ids = np.unique(all_ids)
    state.ids = np.sort(all_ids)
    state.files = [p for p, _ in per_file]
    return state


def _rewrite_without(fs: pafs.FileSystem, path: str, keep: np.ndarray) -> None:
    with fs.open_input_file(path) as f:
        table = pq.read_table(f)
    kept = table.filter(pa.array(keep))
    if kept.num_rows == 0:
        fs.delete_file(path)
        return
    # Write beside, then replace: the file is never half-written under its committed name.
    tmp = path.rsplit("/", 1)[0] + "/_rewrite-" + path.rsplit("/", 1)[1]
    pq.write_table(kept, tmp, filesystem=fs)
    fs.move(tmp, path)
