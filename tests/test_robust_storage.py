"""Corpus-scale robustness: odd folder entries, undecodable names, a byte cap, one source and one writer per output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from click.testing import CliRunner

from batch_parse.cli.main import cli
from batch_parse.pipeline.job import run_job
from batch_parse.pipeline.options import JobOptions
from batch_parse.pipeline.stages import fetch_and_decode
from batch_parse.output import lease
from batch_parse.storage.fetch import FetchError, fetch_objects
from batch_parse.output.lease import LEASE_NAME, LeaseHeld, LeaseLost, _LeaseObject
from batch_parse.storage.listing import iter_objects, key_component, local_path
from batch_parse.storage.location import parse_location
from batch_parse.storage.manifest import object_id, read_manifest, write_manifest
from batch_parse.storage.s3 import pyarrow_filesystem
from batch_parse.output.source_identity import claim_source
from datafiles import data_file, written

MAX_PIXELS = 50_000_000
REPO = str(Path(__file__).resolve().parents[1])


def _batch(table) -> dict:
    """A manifest table as the numpy batch Ray hands to fetch_and_decode."""
    return {name: np.array(table[name].to_pylist(), dtype=np.int64 if name in ("id", "size") else object) for name in table.column_names}


def _manifest(location, path) -> tuple:
    listing = iter_objects(location)
    stats = write_manifest(listing, str(path), pafs.LocalFileSystem())
    return listing.stats, stats, read_manifest(str(path), pafs.LocalFileSystem())


@pytest.fixture
def odd_folder(tmp_path, face_jpegs, monkeypatch):
    """Real JPEGs among the entries that used to kill the job or vanish silently."""
    root = tmp_path / "odd"
    (root / "sub").mkdir(parents=True)
    faces = face_jpegs(5)
    files = {b"a.jpg": faces[0], b"sub/b.jpg": faces[1], b"caf\xe9.jpg": faces[2], b"100%\xff.jpg": faces[3], b"ok%E9.jpg": faces[4]}
    for name, data in files.items():
        fd = os.open(os.fsencode(root) + b"/" + name, os.O_CREAT | os.O_WRONLY, 0o644)  # bytes path: any name
        os.write(fd, data)
        os.close(fd)
    os.symlink("x.jpg", root / "x.jpg")  # a self-referencing symlink: exit 1 of the whole job before
    os.symlink("gone.jpg", root / "dangling.jpg")
    os.symlink("..", root / "sub" / "up")  # a folder loop: walked once
    os.mkfifo(root / "pipe.jpg")
    monkeypatch.chdir(root)  # a relative socket name: AF_UNIX paths are limited to ~108 bytes
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.jpg")
    yield root, files
    sock.close()


def test_odd_entries_become_rows_or_counted_skips(odd_folder, tmp_path):
    root, files = odd_folder
    location = parse_location(str(root))
    stats, manifest, table = _manifest(location, tmp_path / "manifest.parquet")

    keys = table["key"].to_pylist()
    assert sorted(keys) == ["100%25%FF.jpg", "a.jpg", "caf%E9.jpg", "ok%E9.jpg", "sub/b.jpg"]
    assert table["id"].to_pylist() == [object_id(k) for k in keys]
    assert manifest.written == stats.images == 5
    assert stats.skipped_unreadable == manifest.skipped_unreadable == 4
    assert dict(stats.unreadable_reasons) == {"symlink loop": 1, "dangling symlink": 1, "fifo": 1, "socket": 1}
    assert "x.jpg: symlink loop" in stats.unreadable_examples

    out = fetch_and_decode(_batch(table), parse_location(str(root)), MAX_PIXELS)
    assert list(out["error_code"]) == [""] * 5, list(out["error"])
    by_key = dict(zip(keys, fetch_objects(keys, location, threads=2)))
    assert by_key["caf%E9.jpg"] == files[b"caf\xe9.jpg"] and by_key["100%25%FF.jpg"] == files[b"100%\xff.jpg"]
    assert by_key["ok%E9.jpg"] == files[b"ok%E9.jpg"]  # a valid name that merely looks escaped is itself


def test_unreadable_subfolder_is_a_counted_skip(tmp_path, face_jpegs):
    root = tmp_path / "perm"
    (root / "locked").mkdir(parents=True)
    (root / "a.jpg").write_bytes(face_jpegs(1)[0])
    (root / "locked" / "b.jpg").write_bytes(face_jpegs(1)[0])
    (root / "locked").chmod(0)
    try:
        if os.access(root / "locked", os.R_OK):
            pytest.skip("this process reads any folder (root with CAP_DAC_OVERRIDE)")
        listing = iter_objects(parse_location(str(root)))
        assert [o.key for o in listing] == ["a.jpg"]
        assert listing.stats.unreadable_examples == ["locked: permission denied"]
    finally:
        (root / "locked").chmod(0o755)


def test_undecodable_names_escape_reversibly_and_never_collide(tmp_path, face_jpegs):
    root = tmp_path / "names"
    root.mkdir()
    raw = os.fsencode(root)
    names = [b"\xff\xfe.jpg", b"%\xff.jpg", "é%41.jpg".encode(), b"d\xe9/x.jpg", b"caf\xe9.jpg", b"caf%E9.jpg"]
    for name in names:
        os.makedirs(os.path.dirname(raw + b"/" + name), exist_ok=True)
        with open(raw + b"/" + name, "wb") as f:
            f.write(name)
    listing = iter_objects(parse_location(str(root)))
    keys = [o.key for o in listing]
    for key in keys:
        key.encode("utf-8")  # valid text: Parquet strings, ids, messages
        with open(local_path(str(root), key), "rb") as f:
            assert key_component(os.fsdecode(f.read()).split("/")[-1]) == key.split("/")[-1]
    assert sorted(keys) == sorted(["%FF%FE.jpg", "%25%FF.jpg", "é%41.jpg", "d%E9/x.jpg", "caf%E9.jpg"])
    # b"caf\xe9.jpg" escapes to a real sibling's name: that file keeps the key, this one is a counted skip.
    assert listing.stats.unreadable_reasons == {"undecodable name, escaped form taken by another file": 1}
    assert key_component("plain name %41.jpg") == "plain name %41.jpg"  # valid names (and their ids) never change


def test_objects_over_max_bytes_are_refused_from_the_listed_size(tmp_path, face_jpegs):
    root = tmp_path / "big"
    root.mkdir()
    (root / "face.jpg").write_bytes(face_jpegs(1)[0])
    with open(root / "huge.jpg", "wb") as f:
        f.truncate(3 * 1024**3)  # a sparse 3 GB ".jpg": no disk, but a whole read would be 3 GB of memory
    location = parse_location(str(root))
    _, _, table = _manifest(location, tmp_path / "manifest.parquet")
    os.remove(root / "huge.jpg")  # any attempt to open it now would be a not_found row

    out = fetch_and_decode(_batch(table), parse_location(str(root)), MAX_PIXELS, max_bytes=1_000_000)
    codes, errors = dict(zip(out["key"], out["error_code"])), dict(zip(out["key"], out["error"]))
    assert codes == {"face.jpg": "", "huge.jpg": "too_large"}
    assert errors["huge.jpg"] == "huge.jpg is 3,221,225,472 bytes, above max_bytes=1,000,000 (not read)"


def test_fetch_never_reads_past_max_bytes_of_a_file_that_grew(tmp_path, face_jpegs):
    root = tmp_path / "grew"
    root.mkdir()
    face = face_jpegs(1)[0]
    (root / "a.jpg").write_bytes(face)
    (root / "b.jpg").write_bytes(face)
    with open(root / "b.jpg", "ab") as f:  # grew after it was listed at len(face) bytes
        f.write(b"\0" * len(face))
    results = fetch_objects(["a.jpg", "b.jpg"], parse_location(str(root)), threads=1, max_bytes=len(face))
    assert results[0] == face
    assert isinstance(results[1], FetchError) and results[1].code == "too_large"


def test_s3_objects_over_max_bytes_are_refused(s3_server, face_jpegs):
    bucket = s3_server.make_bucket(f"cap-{uuid.uuid4().hex[:10]}")
    client = s3_server.client()
    face = face_jpegs(1)[0]
    client.put_object(Bucket=bucket, Key="in/face.jpg", Body=face)
    client.put_object(Bucket=bucket, Key="in/huge.jpg", Body=b"\xff" * (2 * len(face)))
    location = parse_location(f"s3://{bucket}/in", s3_server.endpoint_url)
    objects = list(iter_objects(location))
    batch = {"id": np.array([object_id(o.key) for o in objects]), "key": np.array([o.key for o in objects], dtype=object),
             "size": np.array([o.size for o in objects]), "etag": np.array([o.etag for o in objects], dtype=object)}
    client.delete_object(Bucket=bucket, Key="in/huge.jpg")  # fetching it now would be not_found

    out = fetch_and_decode(batch, location, MAX_PIXELS, max_bytes=len(face))
    assert list(out["error_code"]) == ["", "too_large"]
    # Grown since listing: fetch itself refuses it from the response's length.
    client.put_object(Bucket=bucket, Key="in/face.jpg", Body=face + b"\0")
    [result] = fetch_objects(["in/face.jpg"], location, max_bytes=len(face))
    assert isinstance(result, FetchError) and result.code == "too_large"


def test_max_bytes_flag_is_validated_before_ray(tmp_path):
    result = CliRunner().invoke(cli, ["run", str(tmp_path), str(tmp_path / "out"), "--max-bytes", "0"])
    assert result.exit_code != 0 and "max_bytes: must be >= 1, got 0" in result.output


# --- one source per output ---------------------------------------------------------------------


def test_a_second_local_source_is_refused_in_one_line(tmp_path, monkeypatch):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    a.mkdir(), b.mkdir()
    (tmp_path / "a-link").symlink_to(a)
    fs, output = pafs.LocalFileSystem(), parse_location(str(out))
    claim_source(fs, output, parse_location(str(a)))
    monkeypatch.chdir(tmp_path)
    for same in (f"{a}/", "a", str(tmp_path / "a-link")):  # other spellings of the same folder
        claim_source(fs, output, parse_location(same))
    with pytest.raises(ValueError) as info:
        claim_source(fs, output, parse_location(str(b)))
    assert str(info.value) == f"output {out} already holds labels of source {a}; refusing source {b}: use another output"


def test_a_second_s3_prefix_or_endpoint_is_refused(s3_server):
    bucket = s3_server.make_bucket(f"src-{uuid.uuid4().hex[:10]}")
    output = parse_location(f"s3://{bucket}/out", s3_server.endpoint_url)
    fs = pyarrow_filesystem(output)
    endpoint = s3_server.endpoint_url.split("://", 1)[1]
    claim_source(fs, output, parse_location(f"s3://{bucket}/a/", s3_server.endpoint_url))
    claim_source(fs, output, parse_location(f"s3://{bucket}/a", s3_server.endpoint_url))
    with pytest.raises(ValueError, match=rf"of source s3://{bucket}/a \(endpoint {endpoint}\); refusing source s3://{bucket}/b "):
        claim_source(fs, output, parse_location(f"s3://{bucket}/b", s3_server.endpoint_url))
    with pytest.raises(ValueError, match=rf"refusing source s3://{bucket}/a \(endpoint other.example:9000\)"):
        claim_source(fs, output, parse_location(f"s3://{bucket}/a", "http://other.example:9000"))


def test_run_job_refuses_another_source_before_any_work(tmp_path, face_jpegs):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for folder in (a, b):
        folder.mkdir()
        (folder / "000.jpg").write_bytes(face_jpegs(1)[0])  # the same key in both: the collision of the issue
    claim_source(pafs.LocalFileSystem(), parse_location(str(out)), parse_location(str(a)))
    with pytest.raises(ValueError, match=f"already holds labels of source {a}; refusing source {b}"):
        run_job(JobOptions(source=str(b), output=str(out)))
    assert not (out / ".batch-parse" / "manifests").exists() and not (out / LEASE_NAME).exists()


# --- one writer per output ---------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    """An output location on a local folder or on the S3 server, and the endpoint to reach it."""
    if request.param == "local":
        return parse_location(str(tmp_path / "out")), None
    s3_server = request.getfixturevalue("s3_server")
    bucket = s3_server.make_bucket(f"lease-{uuid.uuid4().hex[:10]}")
    return parse_location(f"s3://{bucket}/out", s3_server.endpoint_url), s3_server.endpoint_url


def _record(location, endpoint) -> dict:
    store = _LeaseObject(location)
    current = store.read()
    return json.loads(current[0]) if current else None


def _forge(location, endpoint, **fields) -> None:
    """Put a lease written by some other run (e.g. a crashed one) in place, whatever is there."""
    store = _LeaseObject(location)
    record = {"holder": "host elsewhere, pid 7, started 2020-01-01T00:00:00Z", "host": "elsewhere", "pid": 7,
              "expires_at": "2020-01-01T00:02:00Z", "expires_unix": time.time() + 3600, "token": "theirs", **fields}
    current = store.read()
    body = json.dumps(record).encode()
    assert (store.create(body) if current is None else store.replace(body, current[1])) is not None


def test_second_writer_is_refused_naming_the_holder_until_release(output):
    location, endpoint = output
    with lease.acquire(location, holder="host h1, pid 11, started 2030-01-01T00:00:00Z"):
        with pytest.raises(LeaseHeld) as info:
            lease.acquire(location, holder="the second run")
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"output {location.uri} is being written by another run (host h1, pid 11, ")
        assert "lease expires " in message
    with lease.acquire(location) as again:  # released: free for the next run
        assert _record(location, endpoint)["token"] == again.token
    assert _record(location, endpoint) is None


def test_expired_lease_is_taken_over(output):
    location, endpoint = output
    _forge(location, endpoint, expires_unix=time.time() - 1)
    with lease.acquire(location) as mine:
        assert _record(location, endpoint)["token"] == mine.token


def test_only_one_of_racing_creators_or_takers_wins(output):
    location, endpoint = output
    for forge_expired in (False, True):
        if forge_expired:
            _forge(location, endpoint, expires_unix=time.time() - 1)
        barrier = threading.Barrier(6)
        won, refused = [], []

        def contend():
            barrier.wait()
            try:
                won.append(lease.acquire(location))
            except LeaseHeld:
                refused.append(1)

        threads = [threading.Thread(target=contend) for _ in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert (len(won), len(refused)) == (1, 5), forge_expired
        assert _record(location, endpoint)["token"] == won[0].token
        won[0].release()


def test_renewal_extends_and_a_lost_lease_fails_the_run(output):
    location, endpoint = output
    with pytest.raises(LeaseLost, match="lost the lease on .* to host elsewhere, pid 7"):
        with lease.acquire(location) as mine:
            before = _record(location, endpoint)
            assert mine.renew()
            after = _record(location, endpoint)
            assert after["token"] == mine.token and after["expires_unix"] > before["expires_unix"]
            _forge(location, endpoint)  # another run took over (we had stalled past the expiry)
            assert not mine.renew()
    assert _record(location, endpoint)["token"] == "theirs"  # ours was not deleted on the way out


def test_a_run_that_lost_its_lease_publishes_and_seals_nothing(output):
    """The outage case: a run whose lease was taken over while it stalled must not land its staged
    files in data/ nor write the index (fenced on a conditional renewal of the lease)."""
    from batch_parse.output.layout import OutputLayout
    from batch_parse.pipeline import commit

    location, endpoint = output
    layout, fs = OutputLayout(location), pyarrow_filesystem(location)
    staged = layout.staging_dir("run1") + "/part-0.parquet"
    with pytest.raises(LeaseLost, match="nothing more was committed"):
        with lease.acquire(location) as mine:
            mine.fence()  # held: passes
            local = Path(REPO) / "build" / f"staged-{uuid.uuid4().hex}.parquet"
            data_file(local, [(1, None, 0, "no_face", None)])
            if location.is_s3:
                with fs.open_output_stream(staged) as f:
                    f.write(local.read_bytes())
            else:
                Path(staged).parent.mkdir(parents=True)
                Path(staged).write_bytes(local.read_bytes())
            local.unlink()
            _forge(location, endpoint)  # another run took over while we stalled
            commit.publish_staged(fs, layout.staging_root, layout.data_dir, mine.fence)
    assert fs.get_file_info(staged).type == pafs.FileType.File  # left for the next holder to publish and check
    assert commit.data_files(fs, layout.data_dir) == []
    assert _record(location, endpoint)["token"] == "theirs"


def test_lease_of_a_killed_process_on_this_host_is_taken_at_once(tmp_path):
    location = parse_location(str(tmp_path / "out"))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from batch_parse.output.lease import acquire; "
         "from batch_parse.storage.location import parse_location; "
         f"lease = acquire(parse_location({str(tmp_path / 'out')!r})); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LeaseHeld, match=f"pid {holder.pid}, "):
        lease.acquire(location)
    holder.kill()  # SIGKILL: no release; the lease would otherwise block for its whole TTL
    holder.wait()
    with lease.acquire(location) as mine:
        assert _record(location, None)["token"] == mine.token


def test_two_runs_on_one_output_one_is_refused_in_one_line(tmp_path, face_jpegs):
    """Two real `batch-parse run` processes: the second fails at once naming the first; the first finishes."""
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    faces = face_jpegs(4)
    for i, data in enumerate(faces[:3]):
        (src / f"{i:03d}.jpg").write_bytes(data)
    with open(os.fsencode(src) + b"/caf\xe9.jpg", "wb") as f:  # and the entries that used to end the job
        f.write(faces[3])
    os.symlink("x.jpg", src / "x.jpg")
    os.symlink("gone.jpg", src / "dangling.jpg")
    command = [sys.executable, "-m", "batch_parse.cli", "run", str(src), str(dst), "--batch-size", "4"]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": REPO}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        while not (dst / LEASE_NAME).exists():
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.05)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and second.stdout == ""
        assert second.stderr.count("\n") == 1, second.stderr
        assert second.stderr.startswith(f"Error: output {dst} is being written by another run (host {socket.gethostname()}, pid {first.pid}, ")
        output, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:  # failed half way: stop its local Ray too
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 0, output
    assert "4 written: 4 faces" in output and not (dst / LEASE_NAME).exists()
    assert "skipped:  2 unreadable entries (not files we can read), e.g. dangling.jpg: dangling symlink; x.jpg: symlink loop" in output


# --- transient is not final --------------------------------------------------------------------


def _cli_run(src: str, dst: Path, *flags: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`batch-parse run` in its own process: its own local Ray, its own credentials, its exit code."""
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": REPO, **(env_extra or {})}
    command = [sys.executable, "-m", "batch_parse.cli", "run", src, str(dst), *flags]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _output_table(dst: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p) for p in sorted(dst.glob("data/*.parquet"))])


def test_fetch_rides_out_a_short_outage(s3_server, face_jpegs):
    bucket = s3_server.make_bucket(f"blip-{uuid.uuid4().hex[:10]}")
    face = face_jpegs(1)[0]
    s3_server.client().put_object(Bucket=bucket, Key="in/a.jpg", Body=face)
    location = parse_location(f"s3://{bucket}/in", s3_server.endpoint_url)
    s3_server.stop()
    try:
        [failed] = fetch_objects(["in/a.jpg"], location, attempts=1)
        assert failed.code == "fetch_failed" and "cannot reach the S3 endpoint" in failed.message
        # Back within the retries' pauses (~1 + 2 + 4 + 8 s): the object is read, no error row.
        restart = threading.Timer(1.0, s3_server.start)
        restart.start()
        assert fetch_objects(["in/a.jpg"], location, attempts=6) == [face]
        restart.join()
    finally:
        s3_server.start()


def test_outage_mid_run_is_retried_by_the_next_run(s3_server, face_jpegs, tmp_path):
    """SeaweedFS stopped after the first commit: rows that could not be fetched are retryable
    errors and the run exits 3; the same command with the server back completes, each image once."""
    from test_job import assert_exactly_once

    bucket = s3_server.make_bucket(f"outage-{uuid.uuid4().hex[:10]}")
    keys = [f"in/{i:03d}.jpg" for i in range(16)]
    client = s3_server.client()
    for key, data in zip(keys, face_jpegs(len(keys))):
        client.put_object(Bucket=bucket, Key=key, Body=data)
    src, dst = f"s3://{bucket}/in", tmp_path / "out"
    flags = ("--endpoint-url", s3_server.endpoint_url, "--batch-size", "4", "--rows-per-file", "4", "--fetch-attempts", "1")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": REPO}
    first = subprocess.Popen([sys.executable, "-m", "batch_parse.cli", "run", src, str(dst), *flags], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while not written(dst):
            assert first.poll() is None, first.communicate()
            time.sleep(0.1)
        s3_server.stop()
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        s3_server.start()
    assert first.returncode == 3, err[-2000:]
    failed = [r for r in _output_table(dst).to_pylist() if r["status"] == "error"]
    assert failed and {r["error_code"] for r in failed} == {"fetch_failed"}
    assert f"NOT DONE: {len(failed)} image(s) failed with errors that can pass (fetch_failed {len(failed)}); rerun" in out

    second = _cli_run(src, dst, *flags)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"retrying: {len(failed)} image(s) that failed in earlier runs" in second.stdout
    assert f"{len(keys)} images listed, {len(keys) - len(failed)} already done" in second.stdout
    table = _output_table(dst)
    assert_exactly_once(table, set(keys))
    assert set(table["status"].to_pylist()) == {"ok"}


def test_list_only_credentials_are_retryable_not_final(s3_server, face_jpegs, tmp_path):
    from test_job import assert_exactly_once

    bucket = s3_server.make_bucket(f"listonly-{uuid.uuid4().hex[:10]}")
    keys = [f"in/{i}.jpg" for i in range(3)]
    for key, data in zip(keys, face_jpegs(3)):
        s3_server.client().put_object(Bucket=bucket, Key=key, Body=data)
    src, dst = f"s3://{bucket}/in", tmp_path / "out"
    flags = ("--endpoint-url", s3_server.endpoint_url, "--fetch-attempts", "2")

    denied = _cli_run(src, dst, *flags, env_extra=s3_server.list_only_env())
    assert denied.returncode == 3, denied.stderr[-2000:]
    assert "NOT DONE: 3 image(s) failed with errors that can pass (access_denied 3)" in denied.stdout
    assert _output_table(dst)["error_code"].to_pylist() == ["access_denied"] * 3

    # --no-retry-errors: the rows stay, counted as done, and the run says so.
    skipped = _cli_run(src, dst, *flags, "--no-retry-errors")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "3 already done" in skipped.stdout and "not retried: 3 image(s)" in skipped.stdout

    good = _cli_run(src, dst, *flags)
    assert good.returncode == 0, good.stderr[-2000:]
    assert "retrying: 3 image(s) that failed in earlier runs with errors that can pass (access_denied 3)" in good.stdout
    table = _output_table(dst)
    assert_exactly_once(table, set(keys))
    assert set(table["status"].to_pylist()) == {"ok"}


# --- cleanup after kills, Ray of a killed driver, outages while Ray starts, PNG text -----------


def test_leftovers_of_killed_runs_are_removed(output, tmp_path, face_jpegs):
    """What a kill mid-listing or mid-write leaves (forged: a kill cannot be timed to land there):
    a half-written manifest, a rewrite's temporary file and, on S3, an unfinished multipart upload."""
    location, endpoint = output
    fs = pyarrow_filesystem(location)
    src = tmp_path / "empty"
    src.mkdir()
    partial_manifest = location.fs_path(".batch-parse", "manifests", "_partial-20300101T000000000000Z.parquet")
    partial_rewrite = location.fs_path("data", "_rewrite-0000.parquet")
    for path in (partial_manifest, partial_rewrite):
        if not location.is_s3:
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(b"PAR1" + b"\0" * 100)  # no footer: what a killed writer leaves
    client = None
    if location.is_s3:
        client = s3_server_client(endpoint)
        key = location.fs_path("data", "big.parquet").split("/", 1)[1]
        upload = client.create_multipart_upload(Bucket=location.bucket, Key=key)
        client.upload_part(Bucket=location.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1000)

    # The killed run had recorded its source (an empty source never claims an output): this rerun's.
    claim_source(fs, location, parse_location(str(src)))
    summary = run_job(JobOptions(source=str(src), output=location.uri, endpoint_url=endpoint))
    assert summary.leftovers_removed == (3 if location.is_s3 else 2)
    assert "recovered: removed 3 partial manifest(s)" in "\n".join(summary.lines()) or not location.is_s3
    for path in (partial_manifest, partial_rewrite):
        assert fs.get_file_info(path).type == pafs.FileType.NotFound
    if client is not None:
        assert not client.list_multipart_uploads(Bucket=location.bucket, Prefix=location.list_prefix).get("Uploads")


def s3_server_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))


def test_manifest_is_written_under_a_partial_name_until_complete(tmp_path):
    from batch_parse.storage.listing import ObjectInfo

    fs, path = pafs.LocalFileSystem(), str(tmp_path / "m" / "run.parquet")

    def listing_that_dies():
        yield ObjectInfo("a.jpg", 1, "e")
        assert [p.name for p in (tmp_path / "m").iterdir()] == ["_listing-run"]  # its sorted parts; no manifest yet
        raise OSError("listing failed")

    with pytest.raises(OSError):
        write_manifest(listing_that_dies(), path, fs)
    assert list((tmp_path / "m").iterdir()) == []
    write_manifest([ObjectInfo("a.jpg", 1, "e")], path, fs)
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["run.parquet"]


def _live_processes_of_session(sid: int) -> list[str]:
    """Command names of the live (not zombie) processes in session `sid`."""
    names = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getsid(int(proc.name)) != sid:
                continue
            stat = (proc / "stat").read_bytes()
        except OSError:
            continue
        name, rest = stat.split(b"(", 1)[1].rsplit(b")", 1)
        if rest.split()[0] not in (b"Z", b"X"):
            names.append(name.decode(errors="replace"))
    return names


def test_killed_driver_takes_its_local_ray_along(tmp_path, face_jpegs):
    """SIGKILL to the driver alone (an OOM kill): its local Ray must not live on (it did for > 60 s)."""
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i, data in enumerate(face_jpegs(8)):
        (src / f"{i}.jpg").write_bytes(data)
    command = [sys.executable, "-m", "batch_parse.cli", "run", str(src), str(dst), "--batch-size", "2", "--rows-per-file", "2"]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": REPO}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not written(dst):
            assert driver.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
        assert len(_live_processes_of_session(driver.pid)) > 3  # raylet, GCS, workers, agents
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 20
        while _live_processes_of_session(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _live_processes_of_session(driver.pid) == []
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_png_with_huge_text_chunks_is_decoded(face_jpegs):
    """Pillow refuses text chunks above 1 MB decompressed even after the pixels decoded fine."""
    import io
    import struct
    import zlib

    from PIL import Image

    from batch_parse.pipeline.decode import decode_image

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    face = Image.open(io.BytesIO(face_jpegs(1)[0])).convert("RGB")
    buffer = io.BytesIO()
    face.save(buffer, "PNG")
    png = buffer.getvalue()
    end = png.rindex(b"IEND") - 4
    comment = chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * 2_000_000))
    xmp = chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + zlib.compress(b"<x:xmpmeta/>" * 200_000))
    for data in (png[:end] + comment + png[end:], png[:end] + xmp + png[end:], png[:33] + comment + png[33:]):
        assert (decode_image(data, MAX_PIXELS) == np.asarray(face)).all()


def test_outage_while_ray_starts_ends_in_one_line(s3_server, face_jpegs, tmp_path):
    """S3 goes down in the seconds Ray takes to start: one line naming the store, no traceback."""
    bucket = s3_server.make_bucket(f"raystart-{uuid.uuid4().hex[:10]}")
    for i, data in enumerate(face_jpegs(2)):
        s3_server.client().put_object(Bucket=bucket, Key=f"in/{i}.jpg", Body=data)
    port = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    # The real driver, with the server stopped right after its local Ray is up.
    driver = (
        "import os, signal, socket, sys, time\n"
        "from batch_parse.pipeline import job\n"
        "start_ray = job.connect_ray\n"
        "def start_ray_then_outage():\n"
        "    start_ray()\n"
        f"    os.kill({s3_server.process.pid}, signal.SIGTERM)\n"
        "    for _ in range(300):\n"
        "        try:\n"
        f"            socket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n"
        "            time.sleep(0.1)\n"
        "        except OSError:\n"
        "            break\n"
        "job.connect_ray = start_ray_then_outage\n"
        "from batch_parse.cli.main import cli\n"
        "cli.main(sys.argv[1:])\n"
    )
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": REPO}
    try:
        run = subprocess.run([sys.executable, "-c", driver, "run", f"s3://{bucket}/in", f"s3://{bucket}/out",
                              "--endpoint-url", s3_server.endpoint_url], env=env, capture_output=True, text=True, timeout=600)
    finally:
        s3_server.stop()  # waits for the SIGTERMed server to be gone
        s3_server.start()
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: cannot reach the S3 endpoint {s3_server.endpoint_url} (is the URL right and the server up?)"], run.stderr[-3000:]


# --- cost bounded by the new work: the committed index, range anti-join, fanned-out listing, object lists


def _all_ids(state) -> list[int]:
    from batch_parse.storage.id_ranges import ID_SPACE

    return state.index.ids_in_range(0, ID_SPACE).tolist()


def test_recovery_reads_only_what_no_index_covers(tmp_path):
    from batch_parse.pipeline import commit

    data, fs = tmp_path / "data", pafs.LocalFileSystem()
    index = str(tmp_path / ".batch-parse" / "index")
    data_file(data / "a.parquet", [(1, 0, 2, "ok", None), (1, 1, 2, "ok", None), (2, None, 0, "no_face", None)])
    data_file(data / "b.parquet", [(3, None, 0, "error", "truncated"), (4, None, 0, "error", "fetch_failed"), (5, 0, 2, "ok", None)])

    first = commit.recover(fs, str(data), index)  # an output written before indexes: every file read once
    assert first.scanned == 2 and first.incomplete_images == 1  # id 5 has 1 of its 2 faces
    assert _all_ids(first) == [1, 2, 3, 4] and first.retryable_kept == {"fetch_failed": 1}
    again = commit.recover(fs, str(data), index)
    assert again.scanned == 0 and _all_ids(again) == [1, 2, 3, 4]  # nothing read: the index covers both files

    data_file(data / "c.parquet", [(6, None, 0, "no_face", None)])  # a new run's file
    third = commit.recover(fs, str(data), index)
    assert third.scanned == 1 and _all_ids(third) == [1, 2, 3, 4, 6]

    retried = commit.recover(fs, str(data), index, retry_errors=True)  # only b.parquet holds a retryable row
    assert retried.scanned == 1 and retried.retry_cleared == {"fetch_failed": 1} and _all_ids(retried) == [1, 2, 3, 6]
    assert commit.recover(fs, str(data), index).scanned == 0  # rewritten and sealed again

    for path in (tmp_path / ".batch-parse" / "index").iterdir():  # deleting the index is always safe
        path.unlink()
    rebuilt = commit.recover(fs, str(data), index)
    assert rebuilt.scanned == 3 and _all_ids(rebuilt) == [1, 2, 3, 6]


def test_index_files_are_merged_and_keep_every_id(tmp_path, monkeypatch):
    from batch_parse.pipeline import commit
    from batch_parse.storage import id_ranges

    monkeypatch.setattr(commit, "MAX_INDEX_FILES", 3)
    monkeypatch.setattr(id_ranges, "RANGE_ROWS", 7)  # several id ranges, with these few ids
    data, fs = tmp_path / "data", pafs.LocalFileSystem()
    index = str(tmp_path / ".batch-parse" / "index")
    rng = np.random.default_rng(0)
    expected: list[int] = []
    for run in range(8):  # eight runs, one index file each, merged as they pile up
        ids = rng.integers(0, 2**63 - 1, 10).tolist()
        expected += ids
        data_file(data / f"run{run}.parquet", [(i, None, 0, "no_face", None) for i in ids])
        state = commit.recover(fs, str(data), index)
        assert state.scanned == 1 and len(list((tmp_path / ".batch-parse" / "index").iterdir())) <= 4
        assert _all_ids(state) == sorted(expected)
    (data / "run3.parquet").unlink()  # a pruned data file: its ids are no longer committed
    assert _all_ids(commit.recover(fs, str(data), index)) == sorted(expected[:30] + expected[40:])


def test_manifest_excludes_done_ids_range_by_range(tmp_path, monkeypatch):
    from batch_parse.storage import id_ranges, manifest
    from batch_parse.storage.listing import ObjectInfo

    monkeypatch.setattr(id_ranges, "RANGE_ROWS", 10)
    monkeypatch.setattr(manifest, "PART_ROWS", 13)
    keys = [f"img/{i:03d}.jpg" for i in range(100)]
    done = {object_id(k) for k in keys[::3]}
    objects = [ObjectInfo(k, i, f"e{i}") for i, k in enumerate(keys)] + [ObjectInfo(keys[1], 1, "e1")]  # one listed twice
    path = tmp_path / "m" / "run.parquet"
    stats = write_manifest(objects, str(path), pafs.LocalFileSystem(), exclude_ids=done)
    table = read_manifest(str(path), pafs.LocalFileSystem())
    assert sorted(table["key"].to_pylist()) == [k for i, k in enumerate(keys) if i % 3]
    assert table["id"].to_pylist() == sorted(table["id"].to_pylist())
    assert (stats.listed, stats.written, stats.excluded) == (101, 66, 35)
    assert [p.name for p in path.parent.iterdir()] == ["run.parquet"]  # the sorted parts are gone


@pytest.mark.parametrize("fan_out", [2, 32])
def test_fanned_out_listing_finds_what_one_paginator_finds(s3_server, monkeypatch, fan_out):
    from batch_parse.storage import listing as listing_module

    monkeypatch.setattr(listing_module, "FLAT_OBJECTS", 4)
    monkeypatch.setattr(listing_module, "FAN_OUT", fan_out)
    bucket = s3_server.make_bucket(f"fan-{uuid.uuid4().hex[:10]}")
    keys = ["top.jpg", "notes.txt", "a/1.jpg", "a/2.png", "c/", "c/d/e/deep.jpg", "c/d/f.jpg", ".git/x.jpg", "c/.hidden/y.jpg"]
    keys += [f"b/{i}.jpg" for i in range(6)] + ["b/x/sub.jpg"]  # b: more objects than FLAT_OBJECTS, listed whole
    keys += [f"m/{i:02d}/{j}.jpg" for i in range(12) for j in range(2)]
    client = s3_server.client()
    for key in keys:
        client.put_object(Bucket=bucket, Key=f"src/{key}", Body=b"x")
    client.put_object(Bucket=bucket, Key="srcx/not-mine.jpg", Body=b"x")  # shares the prefix's text, not its folder
    location = parse_location(f"s3://{bucket}/src", s3_server.endpoint_url)
    serial = iter_objects(location, page_size=5)
    fanned = iter_objects(location, fan_out=True)
    assert sorted(o.key for o in fanned) == sorted(o.key for o in serial)
    assert len(list(iter_objects(location, fan_out=True))) == 37  # c/.hidden/y.jpg is a photo
    assert (fanned.stats.images, fanned.stats.skipped_non_image, fanned.stats.skipped_system) == (37, 1, 1)  # .git/x.jpg
    assert vars(fanned.stats) == vars(serial.stats) | {"non_image_examples": fanned.stats.non_image_examples}


def test_object_lists_parquet_and_s3_inventory(s3_server, tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket = s3_server.make_bucket(f"inv-{uuid.uuid4().hex[:10]}")
    source = parse_location(f"s3://{bucket}/photos", s3_server.endpoint_url)
    client = s3_server.client()

    plain = tmp_path / "keys.parquet"  # any Parquet of keys; no sizes
    pq.write_table(pa.table({"key": ["photos/a.jpg", "photos/sub/b.png", "photos/notes.txt", "other/c.jpg", "photos/d/"]}), plain)
    listing = iter_objects(source, object_list=str(plain))
    assert [(o.key, o.size) for o in listing] == [("photos/a.jpg", None), ("photos/sub/b.png", None)]
    assert listing.stats.skipped_non_image == 1

    # An S3 Inventory in CSV: gzip, no header, URL-encoded keys, versions and other buckets' rows.
    rows = [(bucket, "photos/caf%C3%A9+1.jpg", "true", "false", "120", "e1"), (bucket, "photos/old.jpg", "false", "false", "5", "e2"),
            (bucket, "photos/gone.jpg", "true", "true", "", ""), ("elsewhere", "photos/x.jpg", "true", "false", "9", "e3")]  # fmt: skip
    csv = "\n".join(",".join(f'"{v}"' for v in row) for row in rows) + "\n"
    client.put_object(Bucket=bucket, Key="inventory/data/part-0.csv.gz", Body=gzip.compress(csv.encode()))
    manifest = {"sourceBucket": bucket, "destinationBucket": f"arn:aws:s3:::{bucket}", "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, IsLatest, IsDeleteMarker, Size, ETag",
                "files": [{"key": "inventory/data/part-0.csv.gz", "size": 1, "MD5checksum": "x"}]}  # fmt: skip
    client.put_object(Bucket=bucket, Key="inventory/csv/manifest.json", Body=json.dumps(manifest).encode())
    found = list(iter_objects(source, object_list=f"s3://{bucket}/inventory/csv/manifest.json"))
    assert [(o.key, o.size, o.etag) for o in found] == [("photos/café 1.jpg", 120, "e1")]

    # The same as a Parquet inventory.
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"bucket": [bucket, bucket], "key": ["photos/p.jpg", "photos/q.jpg"], "size": [1, 2],
                             "e_tag": ["x", "y"], "is_latest": [True, False]}), buffer)  # fmt: skip
    client.put_object(Bucket=bucket, Key="inventory/data/part-0.parquet", Body=buffer.getvalue().to_pybytes())
    manifest.update(fileFormat="Parquet", files=[{"key": "inventory/data/part-0.parquet", "size": 1, "MD5checksum": "x"}])
    client.put_object(Bucket=bucket, Key="inventory/pq/manifest.json", Body=json.dumps(manifest).encode())
    found = list(iter_objects(source, object_list=f"s3://{bucket}/inventory/pq/manifest.json"))
    assert [(o.key, o.size, o.etag) for o in found] == [("photos/p.jpg", 1, "x")]


def test_run_from_an_object_list_without_sizes(s3_server, face_jpegs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket = s3_server.make_bucket(f"objlist-{uuid.uuid4().hex[:10]}")
    for i, data in enumerate(face_jpegs(2)):
        s3_server.client().put_object(Bucket=bucket, Key=f"in/{i}.jpg", Body=data)
    keys = tmp_path / "keys.parquet"
    pq.write_table(pa.table({"key": ["in/0.jpg", "in/1.jpg", "in/deleted-since.jpg"]}), keys)
    run = _cli_run(f"s3://{bucket}/in", tmp_path / "out", "--endpoint-url", s3_server.endpoint_url, "--object-list", str(keys))
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {r["key"]: r for r in _output_table(tmp_path / "out").to_pylist()}
    assert {k: (r["status"], r["error_code"], r["size"]) for k, r in rows.items()} == {
        "in/0.jpg": ("ok", None, None), "in/1.jpg": ("ok", None, None), "in/deleted-since.jpg": ("error", "not_found", None)}
