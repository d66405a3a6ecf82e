"""Streams the image objects under a location (S3 paginator or sorted local walk) and counts what it skips."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import botocore.exceptions as boto_errors

from batch_parse.storage.location import Location
from batch_parse.storage.s3 import StorageError, describe_error, s3_client

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
# Enough for a user to recognise what was skipped (".txt sidecars", "a .DS_Store") without
# holding millions of names.
EXAMPLES_KEPT = 5


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # S3: full object key; local: path relative to the source folder, '/'-separated
    size: int
    etag: str  # S3 ETag without quotes; local: "<size>-<mtime_ns>"


@dataclass
class ListingStats:
    """Filled in while an ObjectListing is iterated."""

    images: int = 0
    skipped_non_image: int = 0
    skipped_hidden: int = 0
    non_image_examples: list[str] = field(default_factory=list)


class ObjectListing:
    """Iterator over the images under a location; `stats` counts what was skipped so far."""

    def __init__(self, location: Location, endpoint_url: str | None = None, page_size: int = 1000):
        self.location = location
        self.stats = ListingStats()
        walk = _walk_s3(location, endpoint_url, page_size) if location.is_s3 else _walk_local(location.path)
        self._objects = self._images_only(walk)

    def __iter__(self) -> Iterator[ObjectInfo]:
        return self

    def __next__(self) -> ObjectInfo:
        return next(self._objects)

    def _images_only(self, walk: Iterator[tuple[str, ObjectInfo]]) -> Iterator[ObjectInfo]:
        for relative, info in walk:
            if any(part.startswith(".") for part in relative.split("/")):
                self.stats.skipped_hidden += 1
            elif is_image_key(relative):
                self.stats.images += 1
                yield info
            else:
                self.stats.skipped_non_image += 1
                if len(self.stats.non_image_examples) < EXAMPLES_KEPT:
                    self.stats.non_image_examples.append(info.key)


def iter_objects(location: Location, endpoint_url: str | None = None, page_size: int = 1000) -> ObjectListing:
    """Image objects under `location`, streamed: memory does not grow with the number of objects.

    Raises StorageError (one-line message) for a missing bucket or folder, bad credentials or an
    unreachable endpoint; the error surfaces on the first `next()`, not on this call.
    """
    return ObjectListing(location, endpoint_url, page_size)


def is_image_key(key: str) -> bool:
    return os.path.splitext(key)[1].lower() in IMAGE_EXTENSIONS


def _walk_s3(location: Location, endpoint_url: str | None, page_size: int) -> Iterator[tuple[str, ObjectInfo]]:
    prefix = location.list_prefix
    try:
        paginator = s3_client(endpoint_url).get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=location.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
        for page in pages:
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                if key.endswith("/"):  # "folder" placeholder objects made by consoles and sync tools
                    continue
                etag = obj.get("ETag", "").strip('"')
                yield key[len(prefix) :], ObjectInfo(key=key, size=int(obj["Size"]), etag=etag)
    except (boto_errors.BotoCoreError, boto_errors.ClientError) as exc:
        raise StorageError(describe_error(exc, location, endpoint_url)) from None


def _walk_local(root: str) -> Iterator[tuple[str, ObjectInfo]]:
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        raise StorageError(f"source folder {what}: {root}")
    seen_dirs: set[tuple[int, int]] = set()

    def walk(folder: str, relative: str) -> Iterator[tuple[str, ObjectInfo]]:
        stat = os.stat(folder)
        # Symlinked folders are followed (datasets are often assembled that way) but only once.
        if (stat.st_dev, stat.st_ino) in seen_dirs:
            return
        seen_dirs.add((stat.st_dev, stat.st_ino))
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            raise StorageError(f"permission denied reading folder {folder}") from None
        for entry in entries:
            key = f"{relative}{entry.name}"
            if entry.is_dir():
                if not entry.name.startswith("."):
                    yield from walk(entry.path, f"{key}/")
            elif entry.is_file():
                try:
                    info = entry.stat()
                except FileNotFoundError:  # deleted while we walked: nothing to label
                    continue
                yield key, ObjectInfo(key=key, size=info.st_size, etag=f"{info.st_size}-{info.st_mtime_ns}")

    yield from walk(root, "")
