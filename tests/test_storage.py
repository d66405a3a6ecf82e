"""Locations, listing, manifest and fetching against a real SeaweedFS S3 server and a real local folder."""

from __future__ import annotations

import os
import uuid

import boto3
import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from botocore.config import Config

from batch_parse.storage.fetch import DEFAULT_THREADS, FetchError, fetch_objects
from batch_parse.storage.listing import ObjectInfo, iter_objects
from batch_parse.storage.location import parse_location
from batch_parse.storage.manifest import MANIFEST_SCHEMA, ROW_GROUP_ROWS, object_id, read_manifest, write_manifest
from batch_parse.storage.s3 import (
    MAX_ATTEMPTS,
    StorageError,
    check_access,
    describe_error,
    pyarrow_filesystem,
    s3_client,
)
from conftest import free_ports

N_FACES = 20
PAGE_SIZE = 7  # 20 images + other objects -> 4 pages


def _bucket(s3_server, purpose: str) -> str:
    return s3_server.make_bucket(f"{purpose}-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="module")
def face_bucket(s3_server, face_jpegs):
    """A bucket with 20 faces under faces/ and the clutter real buckets have around them."""
    bucket = _bucket(s3_server, "faces")
    client = s3_server.client()
    faces = {f"faces/{i:03d}.jpg": data for i, data in enumerate(face_jpegs(N_FACES))}
    faces["faces/nested/deeper/UPPER.JPEG"] = faces.pop(f"faces/{N_FACES - 1:03d}.jpg")
    clutter = {
        "faces/notes.txt": b"not an image",
        "faces/labels.csv": b"key,label\n",
        "faces/._000.jpg": b"AppleDouble sidecar a Mac wrote",
        "faces/__MACOSX/._001.jpg": b"the same, from a zip",
        "faces/nested/": b"",  # folder marker
        "faces2/outside.jpg": b"sibling prefix, must not be listed",
        "root.jpg": b"outside the prefix",
    }
    for key, data in {**faces, **clutter}.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    return bucket, faces


def test_parse_location_accepts_s3_and_local_forms(tmp_path):
    s3 = parse_location("s3://my-bucket/some/prefix/")
    assert (s3.is_s3, s3.bucket, s3.prefix, s3.path) == (True, "my-bucket", "some/prefix", None)
    assert s3.uri == "s3://my-bucket/some/prefix"
    assert s3.join("out", "part-0.parquet") == "s3://my-bucket/some/prefix/out/part-0.parquet"
    assert s3.fs_path("manifest.parquet") == "my-bucket/some/prefix/manifest.parquet"
    assert parse_location("s3://my-bucket").join("x") == "s3://my-bucket/x"
    assert parse_location("s3://my-bucket").list_prefix == ""

    local = parse_location(f"file://{tmp_path}/images")
    assert (local.is_s3, local.path) == (False, f"{tmp_path}/images")
    assert local.join("a", "b.jpg") == f"{tmp_path}/images/a/b.jpg"
    relative = parse_location("some/folder")
    assert relative.path == os.path.abspath("some/folder")


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("", "empty location"),
        ("s3://", "without a bucket"),
        ("s3://ab/images", "invalid S3 bucket name 'ab'"),
        ("s3://My_Bucket/images", "invalid S3 bucket name"),
        ("gs://bucket/images", "unsupported location scheme 'gs://'"),
        ("file://server/share", "with a host"),
    ],
)
def test_parse_location_rejects_bad_uris_with_one_line(uri, expected):
    with pytest.raises(ValueError) as info:
        parse_location(uri)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_s3_listing_pages_through_prefix_and_skips_clutter(s3_server, face_bucket):
    bucket, faces = face_bucket
    listing = iter_objects(parse_location(f"s3://{bucket}/faces", s3_server.endpoint_url), page_size=PAGE_SIZE)
    objects = list(listing)

    assert [o.key for o in objects] == sorted(faces)  # S3 lists in key order
    assert {o.key: o.size for o in objects} == {k: len(v) for k, v in faces.items()}
    head = s3_server.client().head_object(Bucket=bucket, Key="faces/000.jpg")
    assert objects[0].etag == head["ETag"].strip('"')
    assert listing.stats.images == N_FACES
    assert listing.stats.skipped_non_image == 2
    assert sorted(listing.stats.non_image_examples) == ["faces/labels.csv", "faces/notes.txt"]
    assert listing.stats.skipped_system == 2
    assert sorted(listing.stats.system_examples) == ["._000.jpg", "__MACOSX/._001.jpg"]


def test_s3_listing_streams_page_by_page(s3_server, face_jpegs):
    bucket = _bucket(s3_server, "stream")
    client = s3_server.client()
    for i, data in enumerate(face_jpegs(N_FACES)):
        client.put_object(Bucket=bucket, Key=f"{i:03d}.jpg", Body=data)
    listing = iter_objects(parse_location(f"s3://{bucket}", s3_server.endpoint_url), page_size=PAGE_SIZE)
    assert next(listing).key == "000.jpg"
    # Written after the first page was read: only a listing that fetches pages as it goes sees it.
    client.put_object(Bucket=bucket, Key="999.jpg", Body=face_jpegs(1)[0])
    assert [o.key for o in listing][-2:] == [f"{N_FACES - 1:03d}.jpg", "999.jpg"]
    assert listing.stats.images == N_FACES + 1


def test_missing_bucket_is_one_clear_line(s3_server):
    listing = iter_objects(parse_location("s3://no-such-bucket-here/x", s3_server.endpoint_url))
    with pytest.raises(StorageError) as info:
        next(listing)
    message = str(info.value)
    assert message == f"bucket 'no-such-bucket-here' does not exist at {s3_server.endpoint_url}"


def test_check_access_answers_fast(s3_server, face_bucket):
    bucket, _ = face_bucket
    assert check_access(parse_location(f"s3://{bucket}/faces", s3_server.endpoint_url)) is None
    with pytest.raises(StorageError, match="^bucket 'no-such-bucket-here' does not exist"):
        check_access(parse_location("s3://no-such-bucket-here", s3_server.endpoint_url))
    # A refused connection is one line. How soon is check_access's client config (two attempts,
    # short timeouts); it is not timed here: no test may fail because the machine is busy.
    (closed_port,) = free_ports(1)
    with pytest.raises(StorageError, match="^cannot reach the S3 endpoint"):
        check_access(parse_location(f"s3://{bucket}", f"http://127.0.0.1:{closed_port}"))


def test_no_credentials_message(s3_server, face_bucket, monkeypatch, tmp_path):
    bucket, _ = face_bucket
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError, match="^no usable S3 credentials for s3://"):
        check_access(parse_location(f"s3://{bucket}", s3_server.endpoint_url))


def test_product_client_retries_throttling(s3_server):
    config = s3_client(parse_location("s3://any-bucket", s3_server.endpoint_url)).meta.config
    # botocore reads max_attempts as retries after the first try.
    assert config.retries == {"mode": "adaptive", "total_max_attempts": MAX_ATTEMPTS + 1}
    assert config.max_pool_connections >= DEFAULT_THREADS


def test_missing_manifest_message(s3_server, face_bucket):
    bucket, _ = face_bucket
    location = parse_location(f"s3://{bucket}/nothing-here", s3_server.endpoint_url)
    with pytest.raises(FileNotFoundError) as info:
        read_manifest(location.join("manifest.parquet"), pyarrow_filesystem(location))
    message = describe_error(info.value, location)
    assert message == f"not found: {bucket}/nothing-here/manifest.parquet"


def test_bad_secret_is_reported_without_leaking_it(s3_server, face_bucket, monkeypatch):
    bucket, _ = face_bucket
    wrong_secret = "wrong-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    with pytest.raises(StorageError) as info:
        next(iter_objects(parse_location(f"s3://{bucket}/faces", s3_server.endpoint_url)))
    message = str(info.value)
    assert "secret key does not match" in message
    assert wrong_secret not in message and s3_server.secret_key not in message

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown-key")
    with pytest.raises(StorageError) as info:
        next(iter_objects(parse_location(f"s3://{bucket}/faces", s3_server.endpoint_url)))
    assert "access key is not known" in str(info.value)
    assert "unknown-key" not in str(info.value) and wrong_secret not in str(info.value)


def test_unreachable_endpoint_message(s3_server):
    (closed_port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{closed_port}"
    # One attempt: the product's client would retry the refused connection 10 times first.
    client = boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    with pytest.raises(Exception) as info:
        client.list_objects_v2(Bucket="some-bucket")
    message = describe_error(info.value, parse_location("s3://some-bucket", endpoint))
    assert message == f"cannot reach the S3 endpoint {endpoint} (is the URL right and the server up?)"


def test_manifest_on_s3_has_stable_unique_ids_and_honours_exclusions(s3_server, face_bucket):
    bucket, faces = face_bucket
    source = parse_location(f"s3://{bucket}/faces", s3_server.endpoint_url)
    output = parse_location(f"s3://{bucket}/job-output", s3_server.endpoint_url)
    fs = pyarrow_filesystem(output)
    assert isinstance(fs, pafs.S3FileSystem)

    done = sorted(faces)[:5]
    stats = write_manifest(
        iter_objects(source, page_size=PAGE_SIZE),
        output.join("manifest.parquet"),
        fs,
        exclude_ids={object_id(k) for k in done},
    )
    assert (stats.listed, stats.excluded, stats.written, stats.skipped_non_image) == (N_FACES, 5, N_FACES - 5, 2)

    table = read_manifest(output.join("manifest.parquet"), fs)
    assert table.schema.equals(MANIFEST_SCHEMA)
    rows = table.to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(set(faces) - set(done))
    assert all(r["id"] == object_id(r["key"]) and r["id"] >= 0 for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["size"] == len(faces[r["key"]]) for r in rows)

    # The same done ids as a numpy array (how the job reads them back from output files).
    done_array = np.array([object_id(k) for k in done])
    listing = iter_objects(source)
    again = write_manifest(listing, output.fs_path("manifest2.parquet"), fs, exclude_ids=done_array)
    assert (again.excluded, again.written) == (5, N_FACES - 5)
    assert read_manifest(output.fs_path("manifest2.parquet"), fs).equals(table)


def test_object_id_is_stable_across_versions():
    # Ids are persisted in outputs; changing the function would re-label every corpus on resume.
    assert object_id("faces/000.jpg") == 300477533197915799
    assert object_id("") == 7252660547403494068
    keys = [f"img/{i:07d}.jpg" for i in range(100_000)]
    ids = [object_id(k) for k in keys]
    assert len(set(ids)) == len(ids)
    assert min(ids) >= 0 and max(ids) < 2**63


def test_manifest_row_groups_and_partial_file_cleanup(tmp_path):
    objects = (ObjectInfo(key=f"img/{i:06d}.jpg", size=i, etag=f"e{i}") for i in range(25_000))
    path = tmp_path / "deep" / "manifest.parquet"
    stats = write_manifest(objects, f"file://{path}", pafs.LocalFileSystem())
    assert (stats.listed, stats.written, stats.excluded, stats.skipped_non_image) == (25_000, 25_000, 0, 0)
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 5_000]

    def failing_listing():
        yield ObjectInfo(key="a.jpg", size=1, etag="x")
        raise StorageError("listing broke half way")

    broken = tmp_path / "broken.parquet"
    with pytest.raises(StorageError):
        write_manifest(failing_listing(), str(broken), pafs.LocalFileSystem())
    assert not broken.exists()


def test_fetch_from_s3_keeps_order_and_reports_deleted_objects(s3_server, face_jpegs):
    bucket = _bucket(s3_server, "fetch")
    client = s3_server.client()
    faces = face_jpegs(6)
    for i, data in enumerate(faces):
        client.put_object(Bucket=bucket, Key=f"in/{i}.jpg", Body=data)
    location = parse_location(f"s3://{bucket}/in", s3_server.endpoint_url)
    keys = [o.key for o in iter_objects(location)]
    client.delete_object(Bucket=bucket, Key="in/3.jpg")  # deleted between listing and fetching

    results = fetch_objects(keys, location, threads=4)
    assert [r if isinstance(r, FetchError) else r == faces[i] for i, r in enumerate(results)][:3] == [True] * 3
    assert isinstance(results[3], FetchError) and results[3].code == "not_found"
    assert results[3].message == f"s3://{bucket}/in/3.jpg no longer exists (deleted since listing?)"
    assert [r == faces[i] for i, r in enumerate(results) if i != 3] == [True] * 5
    assert fetch_objects([], location) == []


def test_fetch_from_missing_bucket_is_a_row_error(s3_server):
    results = fetch_objects(["a.jpg"], parse_location("s3://no-such-bucket-either", s3_server.endpoint_url))
    message = f"bucket 'no-such-bucket-either' does not exist at {s3_server.endpoint_url}"
    assert results == [FetchError("fetch_failed", message)]


@pytest.fixture
def local_folder(tmp_path, face_jpegs):
    root = tmp_path / "photos"
    faces = face_jpegs(4)
    files = {
        "b.jpg": faces[0],
        "a/z.PNG": faces[1],
        "a/sub/x.webp": faces[2],
        "c.Tiff": faces[3],
        "readme.md": b"#",
        ".DS_Store": b"\0",
        "._b.jpg": b"AppleDouble sidecar",
        ".Trash-1000/files/old.jpg": b"in the trash",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root, files


def test_local_listing_is_sorted_relative_and_skips_clutter(local_folder):
    root, files = local_folder
    listing = iter_objects(parse_location(str(root)))
    objects = list(listing)
    assert [o.key for o in objects] == ["a/sub/x.webp", "a/z.PNG", "b.jpg", "c.Tiff"]
    stat = os.stat(root / "b.jpg")
    assert objects[2] == ObjectInfo("b.jpg", stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}")
    assert (listing.stats.images, listing.stats.skipped_non_image, listing.stats.skipped_system) == (4, 1, 3)
    assert listing.stats.system_examples == [".DS_Store", ".Trash-1000/", "._b.jpg"]  # a system folder is one entry


def test_local_missing_folder_and_fetch(local_folder, tmp_path):
    with pytest.raises(StorageError, match="source folder does not exist"):
        list(iter_objects(parse_location(str(tmp_path / "nope"))))
    with pytest.raises(StorageError, match="is not a folder"):
        list(iter_objects(parse_location(str(tmp_path / "photos" / "b.jpg"))))

    root, files = local_folder
    location = parse_location(str(root))
    keys = [o.key for o in iter_objects(location)]
    os.remove(root / "b.jpg")
    results = fetch_objects(keys, location, threads=2)
    assert results[0] == files["a/sub/x.webp"] and results[3] == files["c.Tiff"]
    assert isinstance(results[2], FetchError) and results[2].code == "not_found"
    assert isinstance(pyarrow_filesystem(location), pafs.LocalFileSystem)
