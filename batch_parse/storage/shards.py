"""WebDataset tar shards as a source: their samples planned from the tar headers, their images read by byte range.

A shard is a tar of samples; a sample is the run of consecutive members sharing a `__key__`, the
member path up to the first '.' of its file name (WebDataset's rule: `a/b.x.jpg` is key `a/b`,
extension `x.jpg`). A sample's image is its first member whose extension ends in an image type (IMAGE_EXTENSIONS);
its other members (captions, json) are ignored, and a sample without one is counted, not labelled.

Planning reads headers only: the shard is opened as a seekable file (pyarrow: ranged GETs on S3,
seeks locally) and Python's tarfile walks it header by header, seeking over member data, so
the driver reads ~1 KiB per member, never whole shards.

Identity and ids. A shard's identity is a digest of its key, its size and the bytes of all its
headers (member names, sizes, mtimes, checksums): a shard rewritten with other members, or the
same members at other sizes, gets another identity and its images other ids (new images, labelled
again); a shard copied or synced elsewhere with its bytes intact keeps its identity (mtimes and
multipart ETags of the copy do not matter). An image's id is the shard's identity (45 bits) and
the sample's ordinal among the shard's samples (18 bits): the ids of one shard are one contiguous
block, so a manifest sorted by id keeps each shard's images together and in order (a worker reads
them in one ranged request per batch), and the sample is fixed by the shard and its key.

Bad input never stops the run: a sample whose bytes run past the end of a truncated shard, or a
shard whose headers stop making sense, gives an error row naming shard and member; a key seen
again later in the same shard gives an error row (`duplicate_key`) for the repeat, so
(source_shard, source_key) names one row of labels.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from batch_parse.storage.objects import ObjectInfo

SHARD_EXTENSIONS = (".tar",)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # WebDataset's image members we label
ORDINAL_BITS = 18  # ids per shard: 262,144 (img2dataset writes 10,000 samples a shard)
MAX_SAMPLES = 1 << ORDINAL_BITS  # the last id is the shard's own error row: 262,143 samples are labelled
_IDENTITY_BITS = 63 - ORDINAL_BITS
# Read-ahead of the header reader (bytes per ranged request): tarfile checks the byte before each
# header, then reads the 512-byte header (plus long-name blocks). Members larger than this cost one
# request each and only this much of their bytes; smaller ones share requests (a shard of 2 KB
# thumbnails took 83 s to plan per 10k images at 4 KiB on SeaweedFS, one request per member).
_HEADER_READ = 16 << 10


@dataclass
class ShardStats:
    shards: int = 0
    samples: int = 0
    samples_without_image: int = 0
    examples: list[str] = field(default_factory=list)  # "shard/key" of a few samples without an image


def is_shard_key(key: str) -> bool:
    return key.lower().endswith(SHARD_EXTENSIONS)


def split_member(name: str) -> tuple[str, str] | None:
    """(__key__, extension) of a member path by WebDataset's rule; None when the name has no '.'."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext


def shard_id(identity: bytes, ordinal: int) -> int:
    """The id of sample number `ordinal` of the shard with this identity digest."""
    prefix = int.from_bytes(identity[:8], "big") & ((1 << _IDENTITY_BITS) - 1)
    return (prefix << ORDINAL_BITS) | ordinal


class _RangedRaw(io.RawIOBase):
    """A pyarrow random-access file as a Python raw stream (tarfile wants seek/read/tell)."""

    def __init__(self, native):
        self.native = native
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.native.size()}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        data = self.native.read_at(len(buffer), self.position)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


@dataclass(frozen=True)
class _Member:
    name: str
    offset: int
    size: int


def _members(fs: pafs.FileSystem, path: str) -> tuple[list[_Member], bytes, str | None]:
    """(regular members in order, digest of their headers, None or why the walk stopped early)."""
    digest = hashlib.blake2b(digest_size=16)
    members: list[_Member] = []
    problem = None
    with fs.open_input_file(path) as native:
        stream = io.BufferedReader(_RangedRaw(native), buffer_size=_HEADER_READ)
        try:
            with tarfile.open(fileobj=stream, mode="r:") as tar:
                while True:
                    try:
                        info = tar.next()
                    except (tarfile.ReadError, EOFError) as exc:
                        problem = f"unreadable after {len(members)} member(s): {exc}"
                        break
                    if info is None:
                        break
                    digest.update(info.tobuf(format=tarfile.PAX_FORMAT))
                    if info.isreg():
                        members.append(_Member(info.name, info.offset_data, info.size))
                stop = tar.offset
        except tarfile.ReadError as exc:  # not a tar at all (or empty)
            problem, stop = f"not a tar file ({exc})", None
        size = native.size()
        if problem is None and stop is not None and stop < size:
            # tarfile ends quietly at a bad or cut header past the first: what follows the last
            # member must be the end-of-archive zeros (or nothing), else the shard is damaged there.
            if native.read_at(min(1024, size - stop), stop).strip(b"\0"):
                problem = f"unreadable after {len(members)} member(s): a damaged or cut header at byte {stop}"
    digest.update(str(size).encode())
    return members, digest.digest(), problem


def plan_shard(fs: pafs.FileSystem, path: str, shard_key: str, stats: ShardStats | None = None,
               capacity: int = MAX_SAMPLES) -> Iterator[ObjectInfo]:
    """The samples of one shard (headers only), in shard order; error samples for what cannot be read.

    A shard has `capacity` ids: its samples take the first capacity - 1, and a shard with more
    samples than that gets one error row (the last id) saying how many were not labelled."""
    members, header_digest, problem = _members(fs, path)
    identity = hashlib.blake2b(shard_key.encode() + b"\0" + header_digest, digest_size=16).digest()
    etag = identity.hex()
    shard_size = fs.get_file_info(path).size
    ordinal = past_capacity = 0
    seen: set[str] = set()
    current: str | None = None
    image: _Member | None = None

    def sample(member: _Member | None, key: str) -> ObjectInfo | None:
        nonlocal ordinal, past_capacity
        if member is None:
            if stats is not None:
                stats.samples_without_image += 1
                if len(stats.examples) < 5:
                    stats.examples.append(f"{shard_key}/{key} (no image member)")
            return None
        if ordinal >= capacity - 1:
            past_capacity += 1  # one error row below names them
            return None
        where = f"{shard_key}/{member.name}"
        code = error = None
        if key in seen:
            code, error = "duplicate_key", f"{where}: sample key {key!r} repeats an earlier sample of shard {shard_key} (not labelled)"
        elif member.offset + member.size > shard_size:
            code, error = "truncated", f"{where}: member runs past the end of shard {shard_key} (truncated shard)"
        seen.add(key)
        made = ObjectInfo(key=where, size=member.size, etag=etag, id=shard_id(identity, ordinal), source_shard=shard_key,
                          source_key=key, offset=member.offset, error_code=code, error=error)
        ordinal += 1
        if stats is not None:
            stats.samples += 1
        return made

    for member in members:
        split = split_member(member.name)
        if split is None:
            continue
        key, ext = split
        if key != current:
            if current is not None:
                made = sample(image, current)
                if made is not None:
                    yield made
            current, image = key, None
        # As WebDataset's decoders do, the last part of the extension says what it is ("x.png" is a PNG).
        if image is None and ext.lower().rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
            image = member
    if current is not None:
        made = sample(image, current)
        if made is not None:
            yield made
    reasons = []
    if past_capacity:
        code, where = "too_many_samples", f"{shard_key}/(after sample {capacity - 1})"
        reasons.append(f"{past_capacity} samples past the first {capacity - 1} of shard {shard_key} are not labelled "
                       f"(a shard's ids hold {capacity - 1}): split the shard")
    if problem is not None:
        code = "truncated"
        where = f"{shard_key}/(after member {members[-1].name})" if members else f"{shard_key}/(first member)"
        reasons.append(f"shard {shard_key} is {problem}")
    if reasons:
        # One row for the whole shard, at the next free ordinal (the reserved last one when the
        # shard is full), so it neither takes a sample's id nor moves between runs.
        yield ObjectInfo(key=where, size=None, etag=etag, id=shard_id(identity, ordinal), source_shard=shard_key,
                         source_key="", offset=0, error_code=code, error=f"{where}: {'; '.join(reasons)}")
    if stats is not None:
        stats.shards += 1


def member_list(fs: pafs.FileSystem, path: str) -> list[_Member]:
    """The regular members of a shard (name, offset, size), from its headers."""
    return _members(fs, path)[0]


def split_shard_key(key: str) -> tuple[str | None, str]:
    """(shard key, member name) of an image's `key` ("<shard>.tar/<member>"); (None, key) if it names no shard."""
    parts = key.split("/")
    for i in range(1, len(parts)):
        if is_shard_key(parts[i - 1]):
            return "/".join(parts[:i]), "/".join(parts[i:])
    return None, key
