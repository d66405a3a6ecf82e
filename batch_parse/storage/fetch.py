"""Reads the bytes of many objects concurrently; a failed object becomes a FetchError, never an exception.

Failures that can pass (the store unreachable, timing out, throttling, answering 5xx or refusing
our credentials) are retried with capped exponential backoff before the object is reported; the
job records what still fails as retryable (output/errors.py), and the next run tries again.
"""

from __future__ import annotations

import os
import random
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import botocore.exceptions as boto_errors

from batch_parse.storage.listing import local_path
from batch_parse.storage.location import Location
from batch_parse.storage.s3 import describe_error, s3_client

DEFAULT_THREADS = 16
# Codes of failures that can pass: retried here, and by the next run when they persist.
TRANSIENT = frozenset({"fetch_failed", "access_denied", "throttled"})
# Tries per object: the client's own (short: 3, connection errors and 5xx) inside each of ours
# (pauses of ~1, 2, 4 s between). A store down for longer than this (~10 s per object) gives
# retryable rows, not a job that stalls for minutes on every object.
DEFAULT_ATTEMPTS = 4
CLIENT_ATTEMPTS = 3
BACKOFF_S = 1.0
BACKOFF_CAP_S = 8.0
# A server that accepts connections but never answers must not hold a worker for botocore's 60 s.
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 30
_THROTTLE_CODES = ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "429")

_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


@dataclass(frozen=True)
class FetchError:
    code: str  # "not_found", "too_large" (final), or one of TRANSIENT (an output row's error_code)
    message: str  # one line, no secrets
    # False when trying again within seconds cannot help (e.g. the bucket is gone); the code still
    # says whether a later run retries it.
    retry_now: bool = field(default=True, compare=False)


def group_by_container(keys: Sequence[str], container_of: Callable[[str], str | None],
                       not_inside: str) -> tuple[list[bytes | FetchError | None], dict[str, list[int]]]:
    """For reading originals out of containers (shards, Parquet files): each container's key
    positions, in key order, and a result list holding a not_found FetchError ("KEY: not_inside")
    for every key that names no container and None for the others, to be filled per container."""
    out: list[bytes | FetchError | None] = [None] * len(keys)
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        container = container_of(key)
        if container is None:
            out[i] = FetchError("not_found", f"{key}: {not_inside}", retry_now=False)
        else:
            groups.setdefault(container, []).append(i)
    return out, groups


def fetch_objects(
    keys: Sequence[str],
    location: Location,
    threads: int = DEFAULT_THREADS,
    max_bytes: int | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
) -> list[bytes | FetchError]:
    """The bytes of each key (same order as `keys`), or a FetchError for the ones that failed.

    S3 keys are full object keys; local keys are relative to the location's folder. On S3 a
    TRANSIENT failure is tried `attempts` times with backoff before it is reported. With
    `max_bytes`, an object larger than that (one that grew since it was listed) is a "too_large"
    FetchError and at most max_bytes + 1 of its bytes are ever read.
    """
    if not keys:
        return []
    if location.is_s3:
        client = _client(location)

        def read(key: str) -> bytes | FetchError:
            for attempt in range(attempts):
                result = _get_s3(client, location, key, max_bytes)
                if not isinstance(result, FetchError) or result.code not in TRANSIENT or not result.retry_now:
                    return result
                if attempt + 1 < attempts:
                    time.sleep(backoff_s(attempt))
            return FetchError(result.code, f"{result.message} (tried {attempts}x)" if attempts > 1 else result.message)

    else:

        def read(key: str) -> bytes | FetchError:
            return _read_local(location.path, key, max_bytes)

    if threads <= 1 or len(keys) == 1:
        return [read(k) for k in keys]
    with ThreadPoolExecutor(max_workers=min(threads, len(keys))) as pool:
        return list(pool.map(read, keys))


# One ranged read covers a batch's images of one shard unless they span more than this (then one
# read per image): sequential reads without holding a shard's worth of bytes in a worker.
MAX_SPAN_BYTES = 64 << 20


def fetch_members(shard_key: str, spans: Sequence[tuple[int, int]], location: Location,
                  attempts: int = DEFAULT_ATTEMPTS) -> list[bytes | FetchError]:
    """The bytes at each (offset, size) of one object (a shard's members), read in as few ranged reads as fit.

    `spans` in shard order; a FetchError for every member of a read that failed (the same
    retries and codes as fetch_objects).
    """
    if not spans:
        return []
    start, end = min(o for o, _ in spans), max(o + n for o, n in spans)
    if end - start > MAX_SPAN_BYTES and len(spans) > 1:
        return [fetch_members(shard_key, [span], location, attempts)[0] for span in spans]
    if location.is_s3:
        client = _client(location)
        for attempt in range(attempts):
            block = _get_s3(client, location, shard_key, None, (start, end))
            if not isinstance(block, FetchError) or block.code not in TRANSIENT or not block.retry_now:
                break
            if attempt + 1 < attempts:
                time.sleep(backoff_s(attempt))
    else:
        block = _read_local_range(location.path, shard_key, start, end)
    if isinstance(block, FetchError):
        return [block] * len(spans)
    out: list[bytes | FetchError] = []
    for offset, size in spans:
        data = block[offset - start : offset - start + size]
        out.append(data if len(data) == size else FetchError("truncated", f"{shard_key}: the shard ends inside this member "
                                                                          "(shorter than when it was planned)", retry_now=False))
    return out


def backoff_s(attempt: int) -> float:
    """Pause after failed try number `attempt` (0-based): doubling from BACKOFF_S, capped, jittered."""
    return min(BACKOFF_CAP_S, BACKOFF_S * 2**attempt) * random.uniform(0.5, 1.0)


def _client(location: Location):
    # One client per process and store: creating one costs ~50 ms and clients are thread-safe.
    # The pid is in the key because a forked child must not share its parent's connection pool.
    cache_key = (os.getpid(), location.endpoint_url, location.anonymous, location.profile)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            client = _clients[cache_key] = s3_client(location, max_attempts=CLIENT_ATTEMPTS,
                                                     connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S)
        return client


def _get_s3(client, location: Location, key: str, max_bytes: int | None,
            byte_range: tuple[int, int] | None = None) -> bytes | FetchError:
    try:
        extra = {} if byte_range is None else {"Range": f"bytes={byte_range[0]}-{byte_range[1] - 1}"}
        response = client.get_object(Bucket=location.bucket, Key=key, **extra)
        body = response["Body"]
        if max_bytes is None:
            return body.read()
        if int(response.get("ContentLength") or 0) > max_bytes:
            body.close()  # drops the connection instead of draining the object
            return _too_large(f"s3://{location.bucket}/{key}", int(response["ContentLength"]), max_bytes)
        data = body.read(max_bytes + 1)
        if len(data) > max_bytes:
            body.close()
            return _too_large(f"s3://{location.bucket}/{key}", None, max_bytes)
        return data
    except boto_errors.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        # A bare 404 (no error body) is a missing key too; NoSuchBucket also comes as 404.
        if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
            return FetchError("not_found", f"s3://{location.bucket}/{key} no longer exists (deleted since listing?)")
        message = describe_error(exc, _object_location(location, key))
        if code in ("AccessDenied", "403") or status == 403:
            return FetchError("access_denied", message)
        if code in _THROTTLE_CODES or status == 429:
            return FetchError("throttled", message)
        # Other 4xx (no such bucket, a bad request) do not pass in seconds; 5xx and the rest may.
        return FetchError("fetch_failed", message, retry_now=not (isinstance(status, int) and 400 <= status < 500 and status != 408))
    except (boto_errors.BotoCoreError, OSError) as exc:
        return FetchError("fetch_failed", describe_error(exc, _object_location(location, key)))


def _read_local(root: str, key: str, max_bytes: int | None) -> bytes | FetchError:
    path = os.path.join(root, *key.split("/"))  # as messages show it: escaped names stay valid text
    try:
        # Non-blocking open: a FIFO put where a listed file was must not hang the worker.
        fd = os.open(local_path(root, key), os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return FetchError("not_found", f"{path} no longer exists (deleted since listing?)")
    except PermissionError:
        return FetchError("access_denied", f"permission denied reading {path}")
    except OSError as exc:
        return FetchError("fetch_failed", f"cannot read {path}: {exc.strerror or exc}")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return FetchError("fetch_failed", f"{path} is no longer a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            return _too_large(path, info.st_size, max_bytes)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as f:
            fd = -1  # closed by the file object from here on
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:
            return _too_large(path, None, max_bytes)
        return data
    except OSError as exc:
        return FetchError("fetch_failed", f"cannot read {path}: {exc.strerror or exc}")
    finally:
        if fd >= 0:
            os.close(fd)


def _read_local_range(root: str, key: str, start: int, end: int) -> bytes | FetchError:
    path = os.path.join(root, *key.split("/"))
    try:
        with open(local_path(root, key), "rb") as f:
            return os.pread(f.fileno(), end - start, start)
    except FileNotFoundError:
        return FetchError("not_found", f"{path} no longer exists (deleted since planning?)")
    except PermissionError:
        return FetchError("access_denied", f"permission denied reading {path}")
    except OSError as exc:
        return FetchError("fetch_failed", f"cannot read {path}: {exc.strerror or exc}")


def _too_large(where: str, size: int | None, max_bytes: int) -> FetchError:
    what = f"{size:,} bytes" if size is not None else "larger than when it was listed"
    return FetchError("too_large", f"{where} is {what}, above max_bytes={max_bytes:,} (not read)")


def _object_location(location: Location, key: str) -> Location:
    return replace(location, uri=f"s3://{location.bucket}/{key}", prefix=key)
