"""Parquet files sorted by id, read one id range at a time: the pieces of a bounded-memory anti-join.

Ids are 63-bit hashes (manifest.object_id), spread evenly over [0, 2**63). Cutting that space into
`ranges(n)` equal ranges and reading each file's rows of one range at a time (row groups whose
min/max statistics miss the range are skipped) keeps memory at one range's rows, however many
ids the files hold in all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

ID_SPACE = 1 << 63
# Ids held at once per range (~2 MB as int64, a few times that while read): the driver's memory
# bound for listing and history alike.
RANGE_ROWS = 250_000
# Row groups of sorted files: small enough that one range reads little beyond itself.
ROW_GROUP_ROWS = 64 * 1024
READ_THREADS = 8


def range_count(rows: int) -> int:
    """How many id ranges keep each at about RANGE_ROWS of `rows` evenly spread ids."""
    return max(1, math.ceil(rows / RANGE_ROWS))


def ranges(count: int) -> list[tuple[int, int]]:
    """`count` half-open ranges [lo, hi) covering the id space."""
    step = math.ceil(ID_SPACE / count)
    return [(i * step, min(ID_SPACE, (i + 1) * step)) for i in range(count)]


def read_range(fs: pafs.FileSystem, path: str, lo: int, hi: int, columns: Sequence[str]) -> pa.Table:
    """The rows with lo <= id < hi of a Parquet file sorted by its `id` column (`columns` must include "id")."""
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        id_column = parquet.schema_arrow.get_field_index("id")
        groups = []
        for g in range(parquet.metadata.num_row_groups):
            stats = parquet.metadata.row_group(g).column(id_column).statistics
            if stats is not None and stats.has_min_max and (stats.max < lo or stats.min >= hi):
                continue
            groups.append(g)
        if not groups:
            return parquet.schema_arrow.empty_table().select(list(columns))
        table = parquet.read_row_groups(groups, columns=list(columns))
    ids = table["id"].to_numpy()
    return table.filter(pa.array((ids >= lo) & (ids < hi)) if hi < ID_SPACE else pa.array(ids >= lo))


def read_ranges(fs: pafs.FileSystem, paths: Sequence[str], lo: int, hi: int, columns: Sequence[str]) -> list[pa.Table]:
    """read_range over many files, in parallel (pyarrow decodes without the GIL; S3 reads overlap)."""
    if len(paths) <= 1:
        return [read_range(fs, p, lo, hi, columns) for p in paths]
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(paths))) as pool:
        return list(pool.map(lambda p: read_range(fs, p, lo, hi, columns), paths))


def sort_by_id(table: pa.Table) -> pa.Table:
    return table.take(pa.array(np.argsort(table["id"].to_numpy(), kind="stable")))


def is_member(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Per id, whether it is in `sorted_ids` (sorted int64): one vectorised binary search."""
    if sorted_ids.size == 0 or ids.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.size - 1)
    return sorted_ids[pos] == ids
