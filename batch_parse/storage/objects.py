"""One image of a source, as a listing (listing.py), an object list (object_list.py) or a shard plan (shards.py) yields it.

The manifest (manifest.py) turns each into a row: its stable id, key, size and etag, and for an
image inside a shard where it lies (source_shard, source_key, offset).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # S3: full object key; local: path relative to the source folder, '/'-separated
    size: int | None  # None: unknown (an object list without sizes)
    etag: str  # S3 ETag without quotes; local: "<size>-<mtime_ns>"; in a shard: the shard's identity
    # Images inside a shard (storage/shards.py); None for one object per image.
    id: int | None = None  # the image's id when its key does not give it (manifest.object_id)
    source_shard: str | None = None  # the shard's key
    source_key: str | None = None  # the sample's key in the shard
    offset: int | None = None  # where the image's bytes start in the shard
    error_code: str | None = None  # planned as an error row (a truncated shard, a repeated key): not read
    error: str | None = None
