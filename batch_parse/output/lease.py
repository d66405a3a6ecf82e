"""One writer per output: a lease file in the output folder, created atomically and renewed while its run lives.

    OUTPUT/.batch-parse/lease.json    {"holder": "host h, pid 12, started ...", "expires_unix": ..., "token": ...}

Creating it is atomic: on S3 a PUT with `If-None-Match: *` (only one creator gets 200, the others
412), locally a hard link of a fully written temporary file (link fails if the name exists;
O_CREAT|O_EXCL where the filesystem has no hard links). A
holder rewrites it every ttl/3 with a conditional replace (`If-Match: <etag>` on S3, a lock file
locally), so it never expires while its run lives. A crashed holder's lease is taken over once it
has expired, or at once when the holder was a process on this host that no longer exists; the
take-over is a conditional replace of the exact version that was judged stale, so of two runs
taking over, one wins. The loser gets one line naming the holder.

S3 stores must honour conditional writes: AWS S3 (since 2024-08), SeaweedFS 4.x (tested), MinIO,
R2. The lease is read before any write, so a store that ignored the headers would still never
overwrite a live lease, but two creators racing on such a store could both win. The conditional
operations themselves are the output location's store's (storage/store.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from batch_parse.output.layout import STATE_DIR
from batch_parse.storage.location import Location
from batch_parse.storage.s3 import StorageError

LEASE_NAME = f"{STATE_DIR}/lease.json"  # relative to the output (output/layout.py)
# A crashed run on another host blocks the output this long; renewals come every third of it, so
# a driver would have to stall for two renewals (80 s) before its lease could be taken.
DEFAULT_TTL_S = 120.0
_ATTEMPTS = 5  # read-then-write rounds before giving up on a lease that keeps changing hands

log = logging.getLogger(__name__)


class LeaseHeld(StorageError):
    """Another live run holds the output's lease; str() is one line naming it."""


class LeaseLost(StorageError):
    """Our lease was taken over while we ran (we stalled past its expiry); str() is one line."""


def default_holder(started: float | None = None) -> str:
    """How a run names itself in the lease: host, pid and start time."""
    return f"host {socket.gethostname()}, pid {os.getpid()}, started {_iso(time.time() if started is None else started)}"


def acquire(output: Location, *, holder: str | None = None, ttl_s: float = DEFAULT_TTL_S) -> Lease:
    """Take the lease on `output` (raise LeaseHeld naming the holder if a live run has it).

    Use as `with acquire(...):`; a daemon thread renews it every ttl_s/3 until the block ends,
    then it is deleted (only if still ours).
    """
    store = _LeaseObject(output)
    lease = Lease(output, store, holder or default_holder(), ttl_s)
    for _ in range(_ATTEMPTS):
        current = store.read()
        if current is None:
            version = store.create(lease.body())
        else:
            record = _parse(current[0], store.where)
            if record.get("token") == lease.token:  # a retried request of ours that had landed
                version = current[1]
            elif not _is_stale(record):
                raise LeaseHeld(_held_message(output, record))
            else:
                version = store.replace(lease.body(), current[1])
                if version is not None:
                    log.warning("took over the lease of %s on %s: it expired, or its process is gone", record.get("holder", "an unknown run"), output.uri)
        if version is not None:
            lease.start(version)
            return lease
    record = _parse(current[0], store.where) if current else {}
    raise LeaseHeld(_held_message(output, record))


def read_lease(output: Location) -> dict | None:
    """The output's lease as it stands, read-only: its record plus `live` (False once a run could take
    it over: expired, or its process on this host is gone); None when no run holds one."""
    store = _LeaseObject(output)
    current = store.read()
    if current is None:
        return None
    record = _parse(current[0], store.where)
    return {**record, "live": not _is_stale(record)}


class Lease:
    """A held lease: `renew()` extends it, `release()` (or the end of a `with` block) gives it up."""

    def __init__(self, output: Location, store, holder: str, ttl_s: float):
        self.output, self.store, self.holder, self.ttl_s = output, store, holder, ttl_s
        self.token = uuid.uuid4().hex
        self.version: str | None = None
        self.lost_to: str | None = None  # set when a renewal finds another holder
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def body(self) -> bytes:
        now = time.time()
        pid_namespace, process_start = _process_identity(os.getpid())
        record = {
            "holder": self.holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_namespace": pid_namespace,
            "process_start": process_start,
            "expires_at": _iso(now + self.ttl_s),
            # Full precision makes every body differ: S3 ETags are content hashes, and an If-Match
            # on an unchanged ETag could not tell our latest write from an older one.
            "expires_unix": now + self.ttl_s,
            "token": self.token,
        }
        return json.dumps(record).encode()

    def start(self, version: str) -> None:
        self.version = version
        self._thread = threading.Thread(target=self._renew_loop, name="batch-parse-lease", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Extend the lease by ttl_s; False (and `lost_to` set) if another run has taken it."""
        with self._lock:
            if self.lost_to is not None or self.version is None:
                return False
            version = self.store.replace(self.body(), self.version)
            if version is None:
                current = self.store.read()
                record = _parse(current[0], self.store.where) if current else {}
                if current is not None and record.get("token") == self.token:
                    version = current[1]  # our write landed, its response was lost and retried
                else:
                    self.lost_to = record.get("holder", "nobody (the lease file was removed)")
                    log.warning("lost the lease on %s to %s", self.output.uri, self.lost_to)
                    return False
            self.version = version
            return True

    def fence(self) -> None:
        """Prove that this run holds the lease now, or raise LeaseLost: called before every write that
        commits or seals (publishing data files, rewriting them, writing the index).

        The proof is a conditional renewal, the store's own compare-and-swap: it succeeds only if the
        lease is still the version we wrote last, and it extends the lease, so no other run can take
        it over for ttl_s after it. A writer that lost its lease (an outage longer than the lease)
        therefore stops before committing anything. What no object store can fence is a writer that
        stalls for over ttl_s between this check and its write; the next run's cross-check of the
        data against the index (commit.py) removes any duplicate such a stall could leave.
        """
        try:
            held = self.renew()
        except (StorageError, OSError) as exc:
            raise LeaseLost(f"cannot confirm the lease on {self.output.uri} before committing ({exc}); nothing more "
                            "was committed: rerun the same command to finish") from exc
        if not held:
            raise LeaseLost(f"lost the lease on {self.output.uri} to {self.lost_to} (this run stalled past the lease's "
                            "expiry); nothing more was committed: rerun the same command to check and finish the output")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self.lost_to is None and self.version is not None:
                try:
                    self.store.delete(self.version)
                except (StorageError, OSError) as exc:  # it expires anyway
                    log.warning("could not remove the lease on %s: %s", self.output.uri, exc)
            self.version = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()
        if exc_type is None and self.lost_to is not None:
            raise LeaseLost(
                f"lost the lease on {self.output.uri} to {self.lost_to} during this run (it stalled past the lease's "
                "expiry): another run may have written too; rerun to check the output"
            )

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    return
            except (StorageError, OSError) as exc:  # a network blip: the next round retries
                log.warning("could not renew the lease on %s: %s", self.output.uri, exc)


def _held_message(output: Location, record: dict) -> str:
    holder = record.get("holder", "an unknown run (unreadable lease)")
    expires = record.get("expires_at", "unknown")
    return (
        f"output {output.uri} is being written by another run ({holder}; lease expires {expires} unless renewed): "
        "one writer per output; wait for it, or rerun after that time if it died"
    )


def _is_stale(record: dict) -> bool:
    if time.time() > float(record.get("expires_unix", 0)):
        return True
    # A holder on this host that no longer runs (a SIGKILLed run, rerun at once) need not be waited for.
    # Only when it is surely the same pid namespace: a container sharing the hostname is not.
    if record.get("host") != socket.gethostname() or None in (record.get("pid_namespace"), record.get("process_start")):
        return False
    pid = int(record.get("pid", 0))
    namespace, _ = _process_identity(os.getpid())
    if pid <= 0 or record["pid_namespace"] != namespace:
        return False
    _, start = _process_identity(pid)
    return start is None or start != record.get("process_start")


def _process_identity(pid: int) -> tuple[str | None, str | None]:
    """(pid namespace, start time in clock ticks since boot) of a live process; start None if it is gone."""
    try:
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        namespace = None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name (field 2) may hold spaces: count from its closing ')'.
            fields = f.read().rsplit(b")", 1)[1].split()
        start = None if fields[0] in (b"Z", b"X") else fields[19].decode()  # state (3), starttime (22)
    except (OSError, IndexError):
        start = None
    return namespace, start


def _parse(body: bytes, where: str) -> dict:
    try:
        record = json.loads(body)
        if isinstance(record, dict):
            return record
    except ValueError:
        pass
    raise StorageError(f"lease file {where} is unreadable: remove it if no run is writing to this output")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _LeaseObject:
    """The lease object in the output's store: its conditional operations bound to LEASE_NAME."""

    def __init__(self, output: Location):
        self.store = output.store(label="lease file")
        self.where = self.store.where(LEASE_NAME)

    def read(self) -> tuple[bytes, str] | None:
        return self.store.read(LEASE_NAME)

    def create(self, body: bytes) -> str | None:
        return self.store.create(LEASE_NAME, body)

    def replace(self, body: bytes, version: str) -> str | None:
        return self.store.replace(LEASE_NAME, body, version)

    def delete(self, version: str) -> None:
        self.store.delete(LEASE_NAME, version)
