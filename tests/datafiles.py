"""Data files with the real output schema and chosen key columns, for commit-protocol tests."""

from __future__ import annotations

import functools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@functools.cache
def _default_weights() -> tuple[str, str]:
    """(name, sha256) of the default model: files a run checks must be of the weights it runs with."""
    from batch_parse.model.weights import file_sha256, resolve
    from batch_parse.pipeline.options import DEFAULT_MODEL

    name, path = resolve(DEFAULT_MODEL)
    return name, file_sha256(path)


def data_file(path: Path, rows: list[tuple]) -> None:
    """A data file with the real schema and the default model's metadata: rows of (id, face_index or
    None, face_count, status, error_code)."""
    from batch_parse.output.schema import output_schema

    schema = output_schema(*_default_weights(), "jpeg")
    n = len(rows)
    values = {
        "id": pa.array([r[0] for r in rows], pa.int64()), "key": pa.array([f"k{r[0]}.jpg" for r in rows]),
        "face_index": pa.array([r[1] for r in rows], pa.int32()), "face_count": pa.array([r[2] for r in rows], pa.int32()),
        "status": pa.array([r[3] for r in rows]), "error_code": pa.array([r[4] for r in rows], pa.string()),
        "model_version": pa.array(["m"] * n), "processed_at": pa.array([0] * n, pa.timestamp("ms", tz="UTC")),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays([values.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema), path)


def faces(image_id: int, count: int, indexes=None) -> list[tuple]:
    """Rows of `count`-face image `image_id` (only `indexes` of them, default all)."""
    return [(image_id, i, count, "ok", None) for i in (range(count) if indexes is None else indexes)]


def rows_of(folder: Path) -> list[tuple[int, int | None]]:
    """(id, face_index) of every row of every data file in `folder`, sorted."""
    keys = []
    for path in sorted(folder.glob("*.parquet")):
        t = pq.read_table(path, columns=["id", "face_index"])
        keys += list(zip(t["id"].to_pylist(), t["face_index"].to_pylist()))
    return sorted(keys, key=lambda k: (k[0], -1 if k[1] is None else k[1]))


def written(output: Path) -> list[Path]:
    """Complete data files of a run in progress: published into data/, or still in its staging folder."""
    complete = []
    for path in [*output.glob("data/*.parquet"), *output.glob(".batch-parse/staging/*/*.parquet")]:
        try:
            pq.read_metadata(path)
            complete.append(path)
        except (OSError, pa.ArrowInvalid):
            pass
    return complete
