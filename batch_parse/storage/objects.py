"""One image object of a source, as a listing (listing.py) or an object list (object_list.py) yields it.

The manifest (manifest.py) turns each into a row: its stable id, key, size and etag.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # S3: full object key; local: path relative to the source folder, '/'-separated
    size: int | None  # None: unknown (an object list without sizes)
    etag: str  # S3 ETag without quotes; local: "<size>-<mtime_ns>"
