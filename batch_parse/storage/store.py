"""Single objects of a location with conditional writes: get, put-if-absent, replace-if, delete-if.

What the lease (output/lease.py) and any other "exactly one writer wins" record need from a store.
A version is the S3 ETag, or locally the content's SHA-256.

S3: `If-None-Match: *` creates only when absent, `If-Match: <etag>` replaces or deletes only that
version (AWS S3 since 2024-08, SeaweedFS 4.x, MinIO, R2). Locally: create is a hard link of a fully
written temporary file (link fails if the name exists; O_CREAT|O_EXCL where the filesystem has no
hard links); replace and delete check the version under an exclusive lock on `NAME.lock` beside
the object, then rename over (or unlink) it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from contextlib import contextmanager

import botocore.exceptions as boto_errors

from batch_parse.storage.location import Location
from batch_parse.storage.s3 import StorageError, describe_error

# A few quick tries per call: callers of conditional writes (lease renewals) retry by rounds of
# their own, and a run failing because S3 is down must not spend minutes releasing its lease.
_S3_ATTEMPTS = 4  # tries per S3 request (botocore's backoff: ~0.5, 1, 2 s)


def object_store(location: Location, label: str = "file") -> S3ObjectStore | LocalObjectStore:
    """The conditional single-object operations of `location`'s store (names relative to it).

    label: what the objects are, as error messages name them ("the lease file ...").
    """
    return S3ObjectStore(location) if location.is_s3 else LocalObjectStore(location, label)


class S3ObjectStore:
    """Objects under an S3 location; versions are ETags, every write is conditional."""

    def __init__(self, location: Location):
        self.location = location
        self.client = location.client(max_attempts=_S3_ATTEMPTS, connect_timeout=5, read_timeout=15)

    def where(self, name: str) -> str:
        return self.location.join(name)

    def read(self, name: str) -> tuple[bytes, str] | None:
        """(body, version) of the object, or None when there is none."""
        try:
            response = self.client.get_object(Bucket=self.location.bucket, Key=self._key(name))
            return response["Body"].read(), response["ETag"]
        except boto_errors.ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._error(name, exc) from None
        except boto_errors.BotoCoreError as exc:
            raise self._error(name, exc) from None

    def create(self, name: str, body: bytes) -> str | None:
        """Write the object only if there is none; its version, or None when one exists."""
        return self._put(name, body, IfNoneMatch="*")

    def replace(self, name: str, body: bytes, version: str) -> str | None:
        """Overwrite the object only if it still is `version`; the new version, or None."""
        return self._put(name, body, IfMatch=version)

    def delete(self, name: str, version: str) -> None:
        """Delete the object only if it still is `version` (else leave it)."""
        key = self._key(name)
        try:
            self.client.delete_object(Bucket=self.location.bucket, Key=key, IfMatch=version)
        except boto_errors.ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                return  # not ours any more: leave it
            if _code(exc) not in ("NotImplemented", "501", "InvalidArgument", "400"):
                raise self._error(name, exc) from None
            # A store without conditional deletes: check, then delete (for a lease, a take-over in
            # between is only possible once it has expired).
            current = self.read(name)
            if current is not None and current[1] == version:
                self.client.delete_object(Bucket=self.location.bucket, Key=key)
        except boto_errors.BotoCoreError as exc:  # unreachable: the caller decides
            raise self._error(name, exc) from None

    def _put(self, name: str, body: bytes, **condition) -> str | None:
        try:
            return self.client.put_object(Bucket=self.location.bucket, Key=self._key(name), Body=body, **condition)["ETag"]
        except boto_errors.ClientError as exc:
            # 412: the condition failed; 409 ConditionalRequestConflict (AWS): a concurrent conditional
            # write; 404: If-Match on an object that was removed meanwhile.
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
                return None
            raise self._error(name, exc) from None
        except boto_errors.BotoCoreError as exc:
            raise self._error(name, exc) from None

    def _key(self, name: str) -> str:
        return f"{self.location.list_prefix}{name}"

    def _error(self, name: str, exc: BaseException) -> StorageError:
        return StorageError(describe_error(exc, self.location.child(name)))


def _code(exc: boto_errors.ClientError) -> str:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class LocalObjectStore:
    """Files under a local (or shared) folder; versions are content hashes."""

    def __init__(self, location: Location, label: str = "file"):
        self.location, self.label = location, label

    def where(self, name: str) -> str:
        return self.location.join(name)

    def read(self, name: str) -> tuple[bytes, str] | None:
        try:
            with open(self.where(name), "rb") as f:
                body = f.read()
        except FileNotFoundError:
            return None
        return body, hashlib.sha256(body).hexdigest()

    def create(self, name: str, body: bytes) -> str | None:
        path = self.where(name)
        folder = os.path.dirname(path)
        made = not os.path.isdir(folder)
        os.makedirs(folder, exist_ok=True)
        try:
            tmp = self._write_temporary(path, body)
        except StorageError:
            if made:  # leave the location as we found it
                try:
                    os.rmdir(folder)
                except OSError:
                    pass
            raise
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        except OSError:  # a filesystem without hard links: exclusive create (briefly seen empty)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:  # an empty file left behind would read as a corrupt record
                os.unlink(path)
                raise _write_error(self.label, path, exc) from None
        finally:
            os.unlink(tmp)
        return hashlib.sha256(body).hexdigest()

    def replace(self, name: str, body: bytes, version: str) -> str | None:
        path = self.where(name)
        with self._locked(path):
            current = self.read(name)
            if current is None or current[1] != version:
                return None
            os.replace(self._write_temporary(path, body), path)
        return hashlib.sha256(body).hexdigest()

    def delete(self, name: str, version: str) -> None:
        path = self.where(name)
        with self._locked(path):
            current = self.read(name)
            if current is not None and current[1] == version:
                os.unlink(path)

    def _write_temporary(self, path: str, body: bytes) -> str:
        folder, base = os.path.split(path)
        tmp = os.path.join(folder, f"_{os.path.splitext(base)[0]}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a full disk: say where, and leave no temporary behind
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise _write_error(self.label, tmp, exc) from None
        return tmp

    @staticmethod
    @contextmanager
    def _locked(path: str):
        fd = os.open(os.path.splitext(path)[0] + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _write_error(label: str, path: str, exc: OSError) -> StorageError:
    folder = os.path.dirname(path)
    return StorageError(f"cannot write the {label} {path}: {exc.strerror or exc} (the folder {folder} must be writable, "
                        "with free space)")
