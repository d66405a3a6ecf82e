"""Streams the image objects under a location (S3 listing, sorted local walk, or an object list) and counts what it skips.

S3 listings fan out: the prefixes under the source are found level by level with Delimiter="/"
until there are FAN_OUT of them (or MAX_DEPTH levels), then listed by LIST_THREADS threads at
once. Threads, not Ray tasks: on a 2-core machine the listing is bound by parsing the answers, and
Ray's worker start-up cost more than it gave (SeaweedFS, 20k keys in 100 folders: one paginator
11-12k keys/s, Ray tasks 7-19k, threads 31-33k with timestamps left unparsed). A folder with more
than FLAT_OBJECTS objects directly in it is listed whole by one thread; keys without any '/'
below the source are listed by one paginator. Buckets too big to list nightly can be read from an
existing object list instead (object_list.py).
"""

from __future__ import annotations

import errno
import os
import queue
import re
import stat
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import botocore.exceptions as boto_errors

from batch_parse.storage.location import Location
from batch_parse.storage.objects import ObjectInfo
from batch_parse.storage.s3 import StorageError, describe_error, s3_client

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
# What operating systems and NAS boxes leave next to photos: never photos of the corpus, so skipped
# (and counted, with examples). A name starting with '.' is no such sign: `.x.jpg` and `.thumbs/t.jpg`
# are labelled like any photo. macOS writes `._NAME` AppleDouble sidecars (resource forks: not
# images, whatever their extension) on non-Apple disks and in zips (under __MACOSX/).
SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".localized", "Icon\r"})
SYSTEM_FOLDERS = frozenset({
    "__MACOSX", ".AppleDouble", ".Trashes", ".Trash", ".Spotlight-V100", ".fseventsd", ".TemporaryItems",
    ".DocumentRevisions-V100", "$RECYCLE.BIN", "System Volume Information",
    "@eaDir", ".@__thumb", ".thumbnails",  # thumbnails the NAS or desktop made of the photos (Synology, QNAP, freedesktop)
    ".git", ".hg", ".svn",  # version control's own store
    ".batch-parse",  # an output's control state, should an output sit inside its source
})  # fmt: skip
# Enough for a user to recognise what was skipped (".txt sidecars", "a .DS_Store") without
# holding millions of names.
EXAMPLES_KEPT = 5
LIST_THREADS = 8
# Containers (tar shards, Parquet files) planned at once: their headers and footers are ranged
# reads, latency-bound on S3.
PLAN_THREADS = 8
T = TypeVar("T")
R = TypeVar("R")
FAN_OUT = 32  # prefixes wanted before listing them in parallel
MAX_DEPTH = 3  # levels of folders looked into to find them
FLAT_OBJECTS = 1000  # more objects than this directly in a folder: one thread lists it whole


@dataclass(frozen=True)
class Unreadable:
    """A folder entry that is neither a readable file nor a folder we can list (walked past, counted)."""

    reason: str  # "symlink loop", "dangling symlink", "socket", "fifo", "device", "permission denied", ...


@dataclass
class ListingStats:
    """Filled in while an ObjectListing is iterated."""

    images: int = 0
    skipped_non_image: int = 0
    non_image_examples: list[str] = field(default_factory=list)
    # Files and folders the system made, not the user (SYSTEM_FILES, SYSTEM_FOLDERS, `._*`). A local
    # system folder is one entry (not walked); on S3 each object under it is one.
    skipped_system: int = 0
    system_examples: list[str] = field(default_factory=list)
    # Local folders only: entries that cannot become a row (see Unreadable), by reason.
    skipped_unreadable: int = 0
    unreadable_reasons: Counter = field(default_factory=Counter)
    unreadable_examples: list[str] = field(default_factory=list)  # "key: reason"
    # Local folders only: symlinks to a folder or photo the source holds by its real path (walked there).
    skipped_second_path: int = 0
    second_path_examples: list[str] = field(default_factory=list)  # "link -> its real key"


class ObjectListing:
    """Iterator over the images under a location; `stats` counts what was skipped so far."""

    def __init__(self, location: Location, page_size: int = 1000, fan_out: bool = False,
                 object_list: str | None = None, wanted: Callable[[str], bool] | None = None):
        self.location = location
        self.wanted = wanted or is_image_key  # which keys are the source's units (images, or shards)
        self.stats = ListingStats()
        if object_list is not None:
            from batch_parse.storage.object_list import walk_object_list

            walk = walk_object_list(object_list, location)
        elif location.is_s3:
            walk = _walk_s3_fanned(location) if fan_out else _walk_s3(location, page_size)
        else:
            walk = _walk_local(location.path)
        self._objects = self._images_only(walk)

    def __iter__(self) -> Iterator[ObjectInfo]:
        return self

    def __next__(self) -> ObjectInfo:
        return next(self._objects)

    def _images_only(self, walk: Iterator[tuple[str, ObjectInfo | Unreadable]]) -> Iterator[ObjectInfo]:
        for relative, info in walk:
            if isinstance(info, _SecondPath):
                self.stats.skipped_second_path += 1
                if len(self.stats.second_path_examples) < EXAMPLES_KEPT:
                    self.stats.second_path_examples.append(f"{relative} -> {info.reason}")
            elif is_system_key(relative) or isinstance(info, _SystemFolder):
                self.stats.skipped_system += 1
                if len(self.stats.system_examples) < EXAMPLES_KEPT:
                    self.stats.system_examples.append(relative)
            elif isinstance(info, Unreadable):
                self.stats.skipped_unreadable += 1
                self.stats.unreadable_reasons[info.reason] += 1
                if len(self.stats.unreadable_examples) < EXAMPLES_KEPT:
                    self.stats.unreadable_examples.append(f"{relative}: {info.reason}")
            elif self.wanted(relative):
                self.stats.images += 1
                yield info
            else:
                self.stats.skipped_non_image += 1
                if len(self.stats.non_image_examples) < EXAMPLES_KEPT:
                    self.stats.non_image_examples.append(info.key)


def iter_objects(location: Location, page_size: int = 1000, fan_out: bool = False,
                 object_list: str | None = None, wanted: Callable[[str], bool] | None = None) -> ObjectListing:
    """Image objects under `location`, streamed: memory does not grow with the number of objects.

    S3: in key order from one paginator, or with `fan_out` from LIST_THREADS paginators over the
    source's folders (in no particular order). `object_list`: read the keys from that object list
    (object_list.py) instead of listing.

    Raises StorageError (one-line message) for a missing bucket or folder, bad credentials or an
    unreachable endpoint; the error surfaces on the first `next()`, not on this call.
    """
    return ObjectListing(location, page_size, fan_out, object_list, wanted)


def is_image_key(key: str) -> bool:
    return os.path.splitext(key)[1].lower() in IMAGE_EXTENSIONS


def is_system_key(relative: str) -> bool:
    """A key (relative to the source) the system made: a SYSTEM_FILES name, a `._*` sidecar, or under a SYSTEM_FOLDERS folder."""
    *folders, name = relative.split("/")
    return name in SYSTEM_FILES or name.startswith("._") or any(_is_system_folder(f) for f in folders)


def _is_system_folder(name: str) -> bool:
    return name in SYSTEM_FOLDERS or name.startswith(".Trash-")  # .Trash-1000: a Linux desktop's trash on that disk


class _SystemFolder(Unreadable):
    """A local system folder, skipped whole (counted once, not walked: it may hold thousands, or be unreadable)."""


class _SecondPath(Unreadable):
    """A symlink to a folder or photo inside the source: it is walked by its real path (the reason
    holds that key), so the link is skipped. Ids are hashes of keys: a photo under two keys would be
    two images, labelled twice, and a new link would re-key photos already labelled."""


def _walk_s3(location: Location, page_size: int) -> Iterator[tuple[str, ObjectInfo]]:
    prefix = location.list_prefix
    try:
        paginator = s3_client(location, raw_timestamps=True).get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=location.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
        for page in pages:
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                if key.endswith("/"):  # "folder" placeholder objects made by consoles and sync tools
                    continue
                etag = obj.get("ETag", "").strip('"')
                yield key[len(prefix) :], ObjectInfo(key=key, size=int(obj["Size"]), etag=etag)
    except (boto_errors.BotoCoreError, boto_errors.ClientError) as exc:
        raise StorageError(describe_error(exc, location)) from None


def _walk_s3_fanned(location: Location) -> Iterator[tuple[str, ObjectInfo]]:
    prefix = location.list_prefix
    try:
        client = s3_client(location, raw_timestamps=True)
        leaves: list[str] = []
        yield from _plan_prefixes(client, location.bucket, prefix, leaves)
        if len(leaves) == 1:
            for page in _pages(client, location.bucket, leaves[0]):
                yield from _entries(page, prefix)
            return
        yield from _parallel_pages(client, location.bucket, leaves, prefix)
    except (boto_errors.BotoCoreError, boto_errors.ClientError) as exc:
        raise StorageError(describe_error(exc, location)) from None


def _plan_prefixes(client, bucket: str, root: str, leaves: list[str]) -> Iterator[tuple[str, ObjectInfo]]:
    """Fill `leaves` with prefixes to list whole and yield the objects found on the way: together,
    every key under `root` once."""
    frontier = [root]
    for _ in range(MAX_DEPTH):
        below: list[str] = []
        for folder in frontier:
            objects, folders = _one_level(client, bucket, folder)
            if objects is None:
                leaves.append(folder)  # many objects right here: listed whole (with its subfolders)
            else:
                yield from _entries(objects, root)
                below += folders
        frontier = below
        if not frontier or len(leaves) + len(frontier) >= FAN_OUT:
            break
    leaves += frontier


def _one_level(client, bucket: str, folder: str) -> tuple[list[dict] | None, list[str]]:
    """The objects directly in `folder` and its subfolders; objects None when there are more than FLAT_OBJECTS."""
    objects: list[dict] = []
    folders: list[str] = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder, Delimiter="/")
    for page in pages:
        objects += page.get("Contents", ())
        folders += [p["Prefix"] for p in page.get("CommonPrefixes", ())]
        if len(objects) > FLAT_OBJECTS:
            return None, []
    return objects, folders


def _pages(client, bucket: str, prefix: str) -> Iterator[list[dict]]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield page.get("Contents", [])


def _parallel_pages(client, bucket: str, leaves: list[str], prefix: str) -> Iterator[tuple[str, ObjectInfo]]:
    """The objects under `leaves`, listed by LIST_THREADS threads; pages pass through a short queue."""
    pages: queue.Queue = queue.Queue(maxsize=4 * LIST_THREADS)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                pages.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def list_leaf(leaf: str) -> None:
        try:
            for page in _pages(client, bucket, leaf):
                if not put(page):
                    return
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(exc)
        finally:
            put(done)

    with ThreadPoolExecutor(max_workers=LIST_THREADS, thread_name_prefix="batch-parse-list") as pool:
        try:
            for leaf in leaves:
                pool.submit(list_leaf, leaf)
            remaining = len(leaves)
            while remaining:
                item = pages.get()
                if item is done:
                    remaining -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield from _entries(item, prefix)
        finally:
            stop.set()


def _entries(objects: list[dict], prefix: str) -> Iterator[tuple[str, ObjectInfo]]:
    for obj in objects:
        key = obj["Key"]
        if not key.endswith("/"):  # "folder" placeholder objects made by consoles and sync tools
            yield key[len(prefix) :], ObjectInfo(key=key, size=int(obj["Size"]), etag=obj.get("ETag", "").strip('"'))


def _walk_local(root: str) -> Iterator[tuple[str, ObjectInfo | Unreadable]]:
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        raise StorageError(f"source folder {what}: {root}")
    seen_dirs: set[tuple[int, int]] = set()
    real_root = os.path.realpath(root)

    def walk(folder: str, relative: str, folder_stat: os.stat_result) -> Iterator[tuple[str, ObjectInfo | Unreadable]]:
        # Symlinked folders are followed (datasets are often assembled that way) but only once.
        if (folder_stat.st_dev, folder_stat.st_ino) in seen_dirs:
            return
        seen_dirs.add((folder_stat.st_dev, folder_stat.st_ino))
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if not relative:  # the source folder itself: nothing to label, say so
                raise StorageError(f"cannot read source folder {root}: {exc.strerror or exc}") from None
            yield relative.rstrip("/"), Unreadable(_reason(exc))
            return
        names = {e.name for e in entries}
        for entry in entries:
            name = key_component(entry.name)
            key = f"{relative}{name}"
            if name != entry.name and name in names:
                # Escaping made it equal to a sibling's real name; the sibling keeps the key.
                yield key, Unreadable("undecodable name, escaped form taken by another file")
                continue
            try:
                info = entry.stat()  # follows symlinks, like open() will
            except FileNotFoundError:
                if entry.is_symlink():
                    yield key, Unreadable("dangling symlink")
                continue  # deleted while we walked: nothing to label
            except OSError as exc:
                yield key, Unreadable(_reason(exc))
                continue
            if entry.is_symlink():
                real = os.path.realpath(entry.path)
                if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
                    # Inside the source: reached by its real path. Links that leave the source (a
                    # dataset assembled from folders elsewhere) are followed: that is their only path.
                    yield key, _SecondPath(os.path.relpath(real, real_root).replace(os.sep, "/") if real != real_root else ".")
                    continue
            if stat.S_ISDIR(info.st_mode):
                if _is_system_folder(entry.name):
                    yield f"{key}/", _SystemFolder("system folder")
                else:
                    yield from walk(entry.path, f"{key}/", info)
            elif stat.S_ISREG(info.st_mode):
                yield key, ObjectInfo(key=key, size=info.st_size, etag=f"{info.st_size}-{info.st_mtime_ns}")
            else:
                yield key, Unreadable(_special_kind(info.st_mode))

    yield from walk(root, "", os.stat(root))


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"unreadable ({exc.strerror or type(exc).__name__})"


def _special_kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "not a regular file"


# Local file names are bytes; keys (and the output's `key` column) are UTF-8 text. A name that is
# not valid UTF-8 keeps its key readable and reversible: each undecodable byte becomes %XX and,
# in such names only, '%' itself becomes %25. Valid names are never changed, so their ids are stable.
_ESCAPED_BYTE = re.compile(r"%([0-9A-F]{2})")


def key_component(name: str) -> str:
    """A local file name (as os.scandir gives it) as a key component: itself if valid UTF-8, else escaped."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    text = os.fsencode(name).decode("utf-8", "surrogateescape")  # undecodable bytes -> U+DC80..U+DCFF
    return "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else "%25" if c == "%" else c for c in text)


def local_path(root: str, key: str) -> str | bytes:
    """The file a local key was listed from: a str path, or the raw bytes path of an escaped name.

    The listing guarantees a folder never holds both a real name and an escaped name equal to it,
    so a component that exists as written is the real one.
    """
    path = os.path.join(root, *key.split("/"))
    if "%" not in key or os.path.lexists(path):
        return path
    raw = os.fsencode(root)
    for part in key.split("/"):
        candidate = os.path.join(raw, os.fsencode(part))
        if "%" in part and not os.path.lexists(candidate):
            original = _unescape(part)
            if original is not None:
                candidate = os.path.join(raw, original)
        raw = candidate
    return raw


def _unescape(component: str) -> bytes | None:
    """The raw name behind an escaped component, or None if key_component cannot have made it."""
    parts = _ESCAPED_BYTE.split(component)  # literal text at even indexes, escaped bytes' hex at odd ones
    if any("%" in text for text in parts[::2]):
        return None
    data = b"".join(bytes([int(p, 16)]) if i % 2 else p.encode("utf-8") for i, p in enumerate(parts))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    return None  # valid UTF-8: key_component would have left the name as it was


def planned_in_order(containers: Iterable[T], plan: Callable[[T], R], threads: int = PLAN_THREADS) -> Iterator[R]:
    """plan(container) for each container on `threads` threads, results in listing order, at most
    2 x threads in flight: the driver holds a few containers' plans, never the whole corpus's."""
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for container in containers:
            pending.append(pool.submit(plan, container))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
