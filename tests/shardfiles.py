"""Real WebDataset tar shards and Parquet image tables for the tests, made from real face JPEGs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def shard_bytes(samples: list[tuple[str, dict[str, bytes]]], mtime: int = 1_700_000_000) -> bytes:
    """A tar of the samples in order: (key, {extension: bytes}) -> members key.ext, as img2dataset writes them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), mtime
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def face_samples(faces: list[bytes], prefix: str) -> list[tuple[str, dict[str, bytes]]]:
    """One sample per face: the JPEG, a caption and a json, as web-scale shards carry them."""
    return [(f"{prefix}{i:05d}", {"jpg": data, "txt": f"face {i}".encode(), "json": b"{}"}) for i, data in enumerate(faces)]


def write_shard(folder: Path, name: str, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(shard_bytes(samples))
    return path


def write_table(path: Path, images: list[bytes], keys: list[str] | None = None, hf_struct: bool = False,
                row_group_size: int = 4, column: str = "image") -> Path:
    """A Parquet image table: `column` binary, or Hugging Face's {bytes, path} struct; `key` strings if given."""
    if hf_struct:
        values = pa.array([{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(images)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        values = pa.array(images, pa.binary())
    columns = {column: values}
    if keys is not None:
        columns["key"] = pa.array(keys, pa.string())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path
