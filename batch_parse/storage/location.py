"""Where a job reads or writes: an s3:// URI or a local folder, parsed and validated once, with its store.

A location owns how it is reached: the S3 endpoint, and the credentials (the standard AWS chain, a
named profile, or none: unsigned requests to a public bucket). Source and output may live in
different stores, so nothing beside a Location says which store it is in; its filesystem, client
and conditional writes come from it (`filesystem()`, `client()`, `store()`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlparse

# AWS's rules for new buckets (3-63 chars, lowercase, digits, dots, hyphens); S3-compatible
# stores accept the same set, so a typo is caught here instead of as a signature error later.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Location:
    """A parsed source or output location.

    S3: `bucket` and `prefix` (no leading or trailing '/', may be empty); `path` is None.
    Local: `path` is absolute; `bucket` is None and `prefix` is "".
    """

    uri: str
    is_s3: bool
    bucket: str | None = None
    prefix: str = ""
    path: str | None = None
    # How the store is reached (S3 only): an S3-compatible endpoint (None = AWS), unsigned requests
    # for public buckets, or a named profile instead of the default credential chain.
    endpoint_url: str | None = None
    anonymous: bool = False
    profile: str | None = None

    def join(self, *parts: str) -> str:
        """URI of a child of this location (an s3:// URI, or an absolute local path)."""
        tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
        if self.is_s3:
            key = "/".join(p for p in (self.prefix, tail) if p)
            return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        return os.path.join(self.path, *tail.split("/")) if tail else self.path

    def fs_path(self, *parts: str) -> str:
        """The same child as `join`, spelled as pyarrow filesystems want it ('bucket/key' for S3)."""
        uri = self.join(*parts)
        return uri[len("s3://") :] if self.is_s3 else uri

    @property
    def list_prefix(self) -> str:
        """S3 key prefix that lists this location as a folder ('photos/' never matches 'photos2/')."""
        return f"{self.prefix}/" if self.prefix else ""

    def child(self, *parts: str) -> Location:
        """The location of a child (a folder or an object) in the same store."""
        if self.is_s3:
            uri = self.join(*parts)
            prefix = uri[len(f"s3://{self.bucket}") :].strip("/")
            return replace(self, uri=uri, prefix=prefix)
        path = self.join(*parts)
        return replace(self, uri=path, path=path)

    def in_same_store(self, uri: str) -> Location:
        """Parse `uri` as a location reached the way this one is (an object list beside a source)."""
        return parse_location(uri, self.endpoint_url, self.anonymous, self.profile)

    @property
    def reached(self) -> dict:
        """How this location's store is reached, as an output records it: no credentials, ever."""
        if not self.is_s3:
            return {}
        return {"endpoint_url": self.endpoint_url, "anonymous": self.anonymous}

    def filesystem(self):
        """The pyarrow filesystem of this location's store (paths from `fs_path`)."""
        from batch_parse.storage.s3 import pyarrow_filesystem

        return pyarrow_filesystem(self)

    def client(self, **config):
        """A boto3 S3 client for this location's store (see storage/s3.py `s3_client`)."""
        from batch_parse.storage.s3 import s3_client

        return s3_client(self, **config)

    def store(self, label: str = "file"):
        """Conditional single-object operations in this location (get, put-if-absent, replace-if, delete-if)."""
        from batch_parse.storage.store import object_store

        return object_store(self, label)


def parse_location(uri: str, endpoint_url: str | None = None, anonymous: bool = False, profile: str | None = None) -> Location:
    """Parse `s3://bucket/prefix`, `file:///path` or a plain local path; ValueError on a bad one.

    endpoint_url, anonymous, profile: how an s3:// location's store is reached (ignored for local ones).
    """
    location = _parse(uri)
    if location.is_s3:
        location = replace(location, endpoint_url=endpoint_url or None, anonymous=bool(anonymous), profile=profile or None)
    return location


def as_location(where: str | Location) -> Location:
    """`where` itself when it is a Location (it knows its store), else parsed as on AWS's default chain."""
    return where if isinstance(where, Location) else parse_location(where)


def _parse(uri: str) -> Location:
    if uri is None or not str(uri).strip():
        raise ValueError("empty location: give an s3://bucket/prefix URI or a local folder")
    uri = str(uri).strip()
    scheme = urlparse(uri).scheme.lower() if "://" in uri else ""
    if scheme == "s3":
        return _parse_s3(uri)
    if scheme == "file":
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI with a host is not a local path: {uri}")
        path = unquote(parsed.path)
        if not path:
            raise ValueError(f"file:// URI without a path: {uri}")
        return _local(path)
    if scheme:
        raise ValueError(f"unsupported location scheme '{scheme}://' in {uri}: use s3:// or a local folder")
    return _local(uri)


def _parse_s3(uri: str) -> Location:
    rest = uri.split("://", 1)[1]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI without a bucket: {uri} (expected s3://bucket/prefix)")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(
            f"invalid S3 bucket name '{bucket}' in {uri}: 3-63 characters, lowercase letters, digits, '.' or '-'"
        )
    prefix = prefix.strip("/")
    if "//" in prefix:
        raise ValueError(f"S3 prefix with an empty path segment ('//') in {uri}")
    uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    return Location(uri=uri, is_s3=True, bucket=bucket, prefix=prefix)


def _local(path: str) -> Location:
    absolute = os.path.abspath(os.path.expanduser(path))
    return Location(uri=absolute, is_s3=False, path=absolute)
