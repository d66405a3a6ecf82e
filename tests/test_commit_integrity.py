"""Exactly-once after what happens to real outputs: touched, copied, truncated, deleted or pruned files,
duplicates a fenced-off writer left, an index that disagrees with the data, foreign files in data/.

Each test builds a small output with real data files, does to it what a user or a failing run does,
and checks that recovery converges: every image either complete exactly once and in the index, or
absent from both data and index (so the next run redoes it), and that a second recovery reads nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from batch_parse.pipeline import commit
from batch_parse.storage.id_ranges import ID_SPACE
from datafiles import data_file, faces, rows_of

FS = pafs.LocalFileSystem()


def _recover(root, **kw):
    return commit.recover(FS, str(root / "data"), str(root / ".batch-parse" / "index"), **kw)


def _indexed(state) -> list[int]:
    return sorted(set(state.index.ids_in_range(0, ID_SPACE).tolist()))


def _sealed_output(root):
    """Image 1 (3 faces) spans a.parquet and b.parquet, as a block boundary leaves it; 2 and 3 are in one file each."""
    data_file(root / "data" / "a.parquet", faces(1, 3, [0, 1]) + faces(2, 1))
    data_file(root / "data" / "b.parquet", faces(1, 3, [2]) + [(3, None, 0, "no_face", None)])
    state = _recover(root)
    assert _indexed(state) == [1, 2, 3] and state.scanned == 2
    return state


def _assert_consistent(root, expected_ids):
    """Data and index agree: each expected image complete exactly once, nothing else; a rerun reads nothing."""
    rows = rows_of(root / "data")
    assert len(rows) == len(set(rows)), "duplicate (id, face_index) rows"
    assert sorted({i for i, _ in rows}) == expected_ids
    again = _recover(root)
    assert _indexed(again) == expected_ids and again.scanned == 0 and again.changed_files == 0


def test_touched_file_loses_no_faces(tmp_path):
    _sealed_output(tmp_path)
    future = time.time() + 60
    os.utime(tmp_path / "data" / "a.parquet", (future, future))  # `touch`: same bytes, new mtime
    state = _recover(tmp_path)
    assert state.changed_files == 1 and state.incomplete_images == 0
    assert _indexed(state) == [1, 2, 3]
    assert len(rows_of(tmp_path / "data")) == 5  # image 1's three faces, 2's one, 3's no_face row
    _assert_consistent(tmp_path, [1, 2, 3])


def test_output_copied_without_timestamps_keeps_every_row(tmp_path):
    _sealed_output(tmp_path / "src")
    shutil.copytree(tmp_path / "src", tmp_path / "copy", copy_function=shutil.copyfile)  # like `cp -r`, `aws s3 sync`
    for path in (tmp_path / "copy" / "data").iterdir():
        later = time.time() + 120
        os.utime(path, (later, later))
    state = _recover(tmp_path / "copy")
    assert state.changed_files == 2 and _indexed(state) == [1, 2, 3]
    _assert_consistent(tmp_path / "copy", [1, 2, 3])


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_truncated_or_deleted_file_has_its_images_redone(tmp_path, damage):
    _sealed_output(tmp_path)
    a = tmp_path / "data" / "a.parquet"
    if damage == "truncate":
        a.write_bytes(a.read_bytes()[:100])
    else:
        a.unlink()
    state = _recover(tmp_path)
    # Image 1 lost two faces with a.parquet: its third face (in b) goes too, so the image is redone
    # whole; image 2 was only in a. Neither may stay in the index.
    assert _indexed(state) == [3] and state.incomplete_images == 1
    _assert_consistent(tmp_path, [3])


def test_duplicates_of_a_fenced_off_writer_are_removed(tmp_path):
    _sealed_output(tmp_path)
    # A run that lost its lease in an outage landed its rows anyway (an older batch-parse; or a
    # write that stalled past the lease between its check and its write): images 1 and 2 again.
    data_file(tmp_path / "data" / "late.parquet", faces(1, 3) + faces(2, 1) + faces(4, 2))
    state = _recover(tmp_path)
    assert state.duplicates_removed == 4 and _indexed(state) == [1, 2, 3, 4]
    _assert_consistent(tmp_path, [1, 2, 3, 4])


def test_duplicates_hidden_by_a_sealed_index_are_found(tmp_path):
    _sealed_output(tmp_path)
    # The state the old protocol could leave: the late file sealed too, duplicates and all.
    late = tmp_path / "data" / "late.parquet"
    data_file(late, faces(2, 1) + faces(5, 1))
    d = commit._data_files(FS, str(tmp_path / "data"))["late.parquet"]
    ids, rows, counts = commit._entries(np.array([2, 5]), np.array([1, 1]))
    commit._write_index(FS, str(tmp_path / ".batch-parse" / "index"), [d.cover(2)],
                        [(ids, np.zeros(2, np.int32), rows, counts)])
    state = _recover(tmp_path)
    assert state.unvouched_images == 1 and state.duplicates_removed == 1
    _assert_consistent(tmp_path, [1, 2, 3, 5])


def test_index_missing_ids_is_repaired_from_the_data(tmp_path):
    _sealed_output(tmp_path)
    index_dir = tmp_path / ".batch-parse" / "index"
    (path,) = index_dir.iterdir()
    table = pq.read_table(path)
    pruned = table.filter(pa.compute.not_equal(table["id"], 2))  # image 2's entry lost, its row still in a.parquet
    pq.write_table(pruned.replace_schema_metadata(table.schema.metadata), path)
    state = _recover(tmp_path)
    assert state.changed_files >= 1 and _indexed(state) == [1, 2, 3]
    # Without the repair, image 2 would be labelled again next run and written twice.
    _assert_consistent(tmp_path, [1, 2, 3])


def test_foreign_parquet_in_data_is_left_alone(tmp_path):
    _sealed_output(tmp_path)
    foreign = tmp_path / "data" / "notes.parquet"
    pq.write_table(pa.table({"comment": ["my own table"]}), foreign)
    state = _recover(tmp_path)
    assert state.foreign == [str(foreign)] and foreign.exists() and _indexed(state) == [1, 2, 3]


def test_a_fenced_off_run_changes_nothing(tmp_path):
    _sealed_output(tmp_path)
    a = tmp_path / "data" / "a.parquet"
    a.write_bytes(a.read_bytes()[:100])
    before = sorted(p.name for p in (tmp_path / "data").iterdir()) + sorted(p.name for p in (tmp_path / ".batch-parse" / "index").iterdir())

    def lost() -> None:
        raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        _recover(tmp_path, fence=lost)
    after = sorted(p.name for p in (tmp_path / "data").iterdir()) + sorted(p.name for p in (tmp_path / ".batch-parse" / "index").iterdir())
    assert before == after  # the damaged file waits for a run that holds the lease


def test_staged_files_are_published_complete_and_unfinished_ones_dropped(tmp_path):
    staging = tmp_path / ".batch-parse" / "staging" / "run1"
    data_file(staging / "x.parquet", faces(7, 2))
    data_file(staging / "y.parquet", faces(8, 1))
    (staging / "y.parquet").write_bytes((staging / "y.parquet").read_bytes()[:50])  # a kill mid-write
    moved, deleted = commit.publish_staged(FS, str(tmp_path / ".batch-parse" / "staging"), str(tmp_path / "data"))
    assert (moved, deleted) == (1, 1) and not staging.exists()
    assert _indexed(_recover(tmp_path)) == [7]

    def lost() -> None:
        raise RuntimeError("lease lost")

    data_file(staging / "z.parquet", faces(9, 1))
    with pytest.raises(RuntimeError):
        commit.publish_staged(FS, str(staging), str(tmp_path / "data"), fence=lost)
    assert (staging / "z.parquet").exists() and not (tmp_path / "data" / "z.parquet").exists()


def test_an_index_edited_to_agree_with_itself_loses_to_the_data(tmp_path):
    """Image 2's entry removed and a.parquet's cover lowered by its one row: entries and covers agree,
    and only the index's checksum (written at close) says it is not what batch-parse wrote."""
    _sealed_output(tmp_path)
    (path,) = (tmp_path / ".batch-parse" / "index").iterdir()
    table = pq.read_table(path)
    record = json.loads(table.schema.metadata[b"batch_parse_index"])
    for cover in record["covers"]:
        if cover["name"] == "a.parquet":
            cover["rows"] -= 1
    pruned = table.filter(pa.compute.not_equal(table["id"], 2))
    meta = {**pq.read_metadata(path).metadata, b"batch_parse_index": json.dumps(record).encode()}
    pq.write_table(pruned.replace_schema_metadata(meta), path)  # keeps the checksum written for the old content
    state = _recover(tmp_path)
    assert state.edited_index_files == 1 and _indexed(state) == [1, 2, 3]
    _assert_consistent(tmp_path, [1, 2, 3])
