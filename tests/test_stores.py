"""A location owns its store: source and output on two real S3 servers, the source read anonymously.

The second SeaweedFS server is a public dataset bucket: anyone may list and read it, and its own
keys differ from the test credentials in the environment, so a signed request there is refused.
A job that reads it must therefore send unsigned requests to it and signed ones to the output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import s3server
from batch_parse.output.layout import OutputLayout
from batch_parse.output.reader import open_output
from batch_parse.storage.fetch import FetchError, fetch_objects
from batch_parse.storage.listing import iter_objects
from batch_parse.storage.location import parse_location
from batch_parse.storage.originals import fetch_originals
from batch_parse.storage.s3 import StorageError, check_access

REPO = Path(__file__).resolve().parents[1]
PUBLIC_KEY, PUBLIC_SECRET = "publickey", "publicsecret"


@pytest.fixture(scope="module")
def public_server(s3_server, tmp_path_factory):
    """A second store: world-readable, with keys of its own (the environment's are s3_server's)."""
    root = tmp_path_factory.mktemp("public-store")
    with s3server.running(root, access_key=PUBLIC_KEY, secret_key=PUBLIC_SECRET, public_read=True) as server:
        yield server


@pytest.fixture(scope="module")
def public_faces(public_server, face_jpegs):
    bucket = public_server.make_bucket("public-faces")
    faces = {f"raw/{i:03d}.jpg": data for i, data in enumerate(face_jpegs(3))}
    client = public_server.client()
    for key, data in faces.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    return bucket, faces


def test_an_anonymous_location_sends_unsigned_requests(s3_server, public_server, public_faces):
    bucket, faces = public_faces
    anonymous = parse_location(f"s3://{bucket}/raw", public_server.endpoint_url, anonymous=True)
    check_access(anonymous)
    keys = sorted(o.key for o in iter_objects(anonymous))
    assert keys == sorted(faces)
    assert fetch_objects(keys, anonymous, threads=2) == [faces[k] for k in keys]
    with anonymous.filesystem().open_input_file(anonymous.fs_path("000.jpg")) as f:  # pyarrow unsigned too
        assert f.read() == faces["raw/000.jpg"]
    child = anonymous.child("000.jpg")
    assert (child.uri, child.endpoint_url, child.anonymous) == (f"s3://{bucket}/raw/000.jpg", public_server.endpoint_url, True)
    # Unsigned requests really carry no credentials: the private store refuses them, though the
    # environment holds its keys.
    private = s3_server.make_bucket("private-faces")
    s3_server.client().put_object(Bucket=private, Key="raw/000.jpg", Body=faces["raw/000.jpg"])
    [refused] = fetch_objects(["raw/000.jpg"], parse_location(f"s3://{private}/raw", s3_server.endpoint_url, anonymous=True),
                              attempts=1)
    assert isinstance(refused, FetchError) and refused.code == "access_denied", refused
    assert fetch_objects(["raw/000.jpg"], parse_location(f"s3://{private}/raw", s3_server.endpoint_url)) == [faces["raw/000.jpg"]]


def test_conditional_writes_go_to_the_location_s_own_store(s3_server, public_server):
    # Same bucket name on both servers: only the location's endpoint says which one is written.
    s3_server.make_bucket("twin")
    public_server.make_bucket("twin")
    here = parse_location("s3://twin/state", s3_server.endpoint_url).store()
    version = here.create("record.json", b"1")
    assert version is not None and here.create("record.json", b"2") is None  # put-if-absent
    assert here.replace("record.json", b"3", "wrong-version") is None  # replace-if
    assert here.read("record.json")[0] == b"1"
    assert public_server.client().list_objects_v2(Bucket="twin").get("KeyCount", 0) == 0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batch_parse.cli", *args], capture_output=True, text=True, timeout=600,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


def test_job_reads_a_public_store_anonymously_and_writes_its_own(s3_server, public_server, public_faces, tmp_path):
    bucket, faces = public_faces
    out_bucket = s3_server.make_bucket("labels-of-public")
    src, dst = f"s3://{bucket}/raw", f"s3://{out_bucket}/labels"
    flags = ("--endpoint-url", s3_server.endpoint_url, "--source-endpoint-url", public_server.endpoint_url, "--batch-size", "4")


    run = _cli("run", src, dst, *flags, "--source-anonymous")
    assert run.returncode == 0, run.stderr[-3000:]

    output = parse_location(dst, s3_server.endpoint_url)
    fs = output.filesystem()
    with fs.open_input_stream(OutputLayout(output).source_file) as f:
        recorded = json.loads(f.read())
    host = public_server.endpoint_url.split("://", 1)[1]
    assert recorded == {"source": src, "endpoint": host, "anonymous": True}  # how it was reached, no credentials
    assert PUBLIC_SECRET not in json.dumps(recorded) and s3_server.secret_key not in json.dumps(recorded)
    written = open_output(output)
    rows = [r for f in written.files for r in pq.read_table(fs.open_input_file(f.path), columns=["key", "status"]).to_pylist()]
    assert sorted({r["key"] for r in rows}) == sorted(faces) and {r["status"] for r in rows} <= {"ok", "no_face"}
    meta = written.files[0].metadata
    assert (meta["source"], meta["endpoint_url"], meta["source_anonymous"]) == (src, public_server.endpoint_url, True)
    # Nothing was written to the source's store.
    assert sorted(o["Key"] for o in public_server.client().list_objects_v2(Bucket=bucket)["Contents"]) == sorted(faces)

    # render, export and import fetch originals the one way: from the recorded source, unsigned.
    keys = sorted(faces)
    assert fetch_originals(meta, keys, output) == [faces[k] for k in keys]

    again = _cli("run", src, dst, *flags, "--source-anonymous", "--dry-run")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "to do:    0 image(s)" in again.stdout, again.stdout


def test_a_profile_names_the_credentials_of_one_location(s3_server, tmp_path, monkeypatch):
    # The environment's keys may write; the profile's (the server's list-only identity) may not:
    # a location with the profile must use the profile's.
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[lister]\naws_access_key_id = {s3server.LIST_ONLY_KEY}\n"
                           f"aws_secret_access_key = {s3server.LIST_ONLY_SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    bucket = s3_server.make_bucket("profile-writes")
    default = parse_location(f"s3://{bucket}/state", s3_server.endpoint_url)
    lister = parse_location(f"s3://{bucket}/state", s3_server.endpoint_url, profile="lister")
    assert default.store().create("made.json", b"1") is not None
    with pytest.raises(StorageError, match="access denied"):
        lister.store().create("refused.json", b"1")
    with pytest.raises(OSError):  # pyarrow's filesystem uses the profile's keys too
        with lister.filesystem().open_output_stream(lister.fs_path("by-pyarrow.json")) as f:
            f.write(b"2")
    assert [o.key for o in iter_objects(lister, wanted=lambda key: True)] == ["state/made.json"]  # it may list
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["state/made.json"]
