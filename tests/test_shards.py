"""WebDataset tar shards as a source: planned from headers, read by range, labelled exactly once.

Real tar shards of real face JPEGs (tests/shardfiles.py), on local disk and on the real S3 test
server; the `webdataset` package reads the same shards and must agree with our planning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_parse.pipeline.job import run_job
from batch_parse.pipeline.options import JobOptions
from batch_parse.report.inspect import inspect_output
from batch_parse.report.progress import progress
from batch_parse.storage.fetch import fetch_members
from batch_parse.storage.location import parse_location
from batch_parse.storage.originals import fetch_originals
from batch_parse.storage.shards import ORDINAL_BITS, split_shard_key
from batch_parse.storage.sources import ShardSamples, resolve_format
from datafiles import written
from shardfiles import face_samples, shard_bytes, write_shard

REPO = Path(__file__).resolve().parents[1]
MODEL = "stn-icnn/default"


def _plan(folder: Path | str, endpoint: str | None = None) -> list:
    return list(ShardSamples(parse_location(str(folder), endpoint)))


def test_planning_reads_headers_and_agrees_with_webdataset(tmp_path, face_jpegs, s3_server):
    wds = pytest.importorskip("webdataset")
    faces = face_jpegs(5)
    samples = face_samples(faces[:3], "a/")  # keys with a folder, as img2dataset's
    samples.append(("a/caption-only", {"txt": b"no image in this sample"}))
    samples.append(("a/00010.x", {"png": faces[3], "txt": b"a png, key with a dot"}))  # key: a/00010, ext: x.png
    samples.append(("b00011", {"webp.json": b"{}", "jpeg": faces[4]}))
    shard = write_shard(tmp_path / "src", "000.tar", samples)

    listing = ShardSamples(parse_location(str(tmp_path / "src")))
    planned = list(listing)
    assert (listing.stats.images, listing.stats.skipped_non_image) == (5, 1)  # the caption-only sample: counted, shown
    assert listing.stats.non_image_examples == ["000.tar/a/caption-only (no image member)"]
    theirs = [(s["__key__"], s) for s in wds.WebDataset(str(shard), shardshuffle=False)]
    with_image = [(k, next(v for e, v in s.items() if e.split(".")[-1] in ("jpg", "jpeg", "png", "webp"))) for k, s in theirs
                  if any(e.split(".")[-1] in ("jpg", "jpeg", "png", "webp") for e in s if not e.startswith("__"))]
    assert [p.source_key for p in planned] == [k for k, _ in with_image] == ["a/00000", "a/00001", "a/00002", "a/00010", "b00011"]
    read = fetch_members("000.tar", [(p.offset, p.size) for p in planned], parse_location(str(tmp_path / "src")))
    assert read == [data for _, data in with_image]  # the bytes webdataset hands out, from one ranged read
    assert {p.source_shard for p in planned} == {"000.tar"} and planned[0].key == "000.tar/a/00000.jpg"
    ids = [p.id for p in planned]
    assert ids == list(range(ids[0], ids[0] + len(ids))) and ids[0] % (1 << ORDINAL_BITS) == 0  # one block per shard
    assert split_shard_key(planned[3].key) == ("000.tar", "a/00010.x.png")

    # The same bytes on S3 (another key prefix, other mtimes): the same identity and ids, found by ranged reads.
    bucket = s3_server.make_bucket("shards-plan")
    s3_server.client().put_object(Bucket=bucket, Key="corpus/000.tar", Body=shard.read_bytes())
    on_s3 = _plan(f"s3://{bucket}/corpus", s3_server.endpoint_url)
    assert [p.source_key for p in on_s3] == [p.source_key for p in planned]
    assert on_s3[0].source_shard == "corpus/000.tar"
    assert resolve_format(parse_location(f"s3://{bucket}/corpus", s3_server.endpoint_url), "auto") == "webdataset"
    # A rewritten shard (other bytes in a member) is another shard: other ids.
    samples[0] = ("a/00000", {"jpg": faces[1], "txt": b"x"})
    write_shard(tmp_path / "src", "000.tar", samples)
    assert _plan(tmp_path / "src")[0].id != planned[0].id


def test_bad_shards_are_rows_naming_shard_and_member(tmp_path, face_jpegs):
    faces = face_jpegs(4)
    whole = shard_bytes(face_samples(faces, "k"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "cut.tar").write_bytes(whole[: len(whole) // 2])  # truncated mid-member
    write_shard(tmp_path / "src", "dup.tar", [("k1", {"jpg": faces[0]}), ("k2", {"jpg": faces[1]}), ("k1", {"jpg": faces[2]})])
    (tmp_path / "src" / "junk.tar").write_bytes(b"this is not a tar archive at all" * 40)
    planned = {p.key: p for p in _plan(tmp_path / "src")}
    errors = {k: (p.error_code, p.error) for k, p in planned.items() if p.error_code}
    cut = [k for k, (code, _) in errors.items() if k.startswith("cut.tar/") and code == "truncated"]
    assert cut and all(errors[k][1].startswith(f"{k}: ") and "cut.tar" in errors[k][1] for k in cut), errors
    assert errors["dup.tar/k1.jpg"] == ("duplicate_key", "dup.tar/k1.jpg: sample key 'k1' repeats an earlier sample of shard "
                                                         "dup.tar (not labelled)")
    assert planned["dup.tar/k2.jpg"].error_code is None
    (junk,) = [k for k in errors if k.startswith("junk.tar/")]
    assert errors[junk][0] == "truncated" and "junk.tar is not a tar file" in errors[junk][1]


def _rows(output: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(output.glob("data/*.parquet"))])


def test_s3_shards_labelled_exactly_once_incrementally_and_read_back(s3_server, ray_local, face_jpegs, tmp_path):
    bucket = s3_server.make_bucket("shards-job")
    client = s3_server.client()
    faces = face_jpegs(7)
    first = face_samples(faces[:3], "s0-")
    first.append(("s0-bad", {"jpg": b"not a jpeg, though named one"}))  # a member that is not an image
    client.put_object(Bucket=bucket, Key="shards/000.tar", Body=shard_bytes(first))
    client.put_object(Bucket=bucket, Key="shards/001.tar", Body=shard_bytes(face_samples(faces[3:5], "s1-")))
    src, out = f"s3://{bucket}/shards/", tmp_path / "out"
    options = dict(source=src, output=str(out), model=MODEL, endpoint_url=s3_server.endpoint_url, batch_size=4, rows_per_file=3)

    summary = run_job(JobOptions(**options))
    assert (summary.listed, summary.already_done) == (6, 0)
    table = _rows(out)
    by_key = {r["key"]: r for r in table.select(["key", "source_shard", "source_key", "status", "error_code", "error"]).to_pylist()}
    assert sorted(by_key) == sorted([f"shards/000.tar/s0-{i:05d}.jpg" for i in range(3)] + ["shards/000.tar/s0-bad.jpg"]
                                    + [f"shards/001.tar/s1-{i:05d}.jpg" for i in range(2)])
    bad = by_key["shards/000.tar/s0-bad.jpg"]
    assert bad["status"] == "error" and bad["error_code"] == "not_an_image" and bad["error"].startswith("shards/000.tar/s0-bad.jpg: ")
    assert (bad["source_shard"], bad["source_key"]) == ("shards/000.tar", "s0-bad")
    assert table.num_rows == len({(r["id"], r["face_index"]) for r in table.select(["id", "face_index"]).to_pylist()})
    meta = json.loads(table.schema.metadata[b"batch_parse"])
    assert meta["source_format"] == "webdataset"

    # The join back to the corpus, as the README shows it: labels by (source_shard, source_key).
    joined = duckdb.sql(f"""
        select l.source_key, l.status from read_parquet('{out}/data/*.parquet') l
        join (values ('shards/001.tar', 's1-00001')) c(shard, key) on l.source_shard = c.shard and l.source_key = c.key
    """).fetchall()
    assert joined == [("s1-00001", "ok")]

    again = run_job(JobOptions(**options))
    assert (again.listed, again.already_done, again.rows_written) == (6, 6, 0)

    # A new shard, and 001.tar rewritten with other images: only their images are labelled.
    client.put_object(Bucket=bucket, Key="shards/002.tar", Body=shard_bytes(face_samples(faces[5:6], "s2-")))
    client.put_object(Bucket=bucket, Key="shards/001.tar", Body=shard_bytes(face_samples(faces[5:7], "s1-")))
    third = run_job(JobOptions(**options))
    assert (third.listed, third.already_done) == (7, 4)
    keys = [r["key"] for r in _rows(out).select(["key"]).to_pylist()]
    assert keys.count("shards/002.tar/s2-00000.jpg") == 1 and keys.count("shards/001.tar/s1-00000.jpg") == 2  # old and new 001

    # Readers of the output: dry run, progress, inspect, and the originals out of the shards.
    assert "to do:    0 image(s)" in subprocess.run(
        [sys.executable, "-m", "batch_parse.cli", "run", src, str(out), "--endpoint-url", s3_server.endpoint_url, "--dry-run"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300).stdout
    assert progress(str(out)).to_dict()["pending"] == 0
    assert any("error" in line for line in inspect_output(str(out)))
    source = parse_location(src, s3_server.endpoint_url)
    originals = fetch_originals(meta, ["shards/002.tar/s2-00000.jpg", "shards/000.tar/s0-00001.jpg"], parse_location(str(out)))
    assert originals == [faces[5], faces[1]] and source.is_s3


def test_sigkill_mid_shard_then_rerun_is_exactly_once(face_jpegs, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    faces = face_jpegs(24)
    write_shard(src, "000.tar", face_samples(faces[:12], "a"))
    write_shard(src, "001.tar", face_samples(faces[12:], "b"))
    command = [sys.executable, "-m", "batch_parse.cli", "run", str(src), str(out), "--batch-size", "4", "--rows-per-file", "4"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 400
    while not written(out):
        assert proc.poll() is None, f"the run ended before the kill: {proc.stdout.read()[-2000:]}"
        assert time.time() < deadline, "no file was written"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = sum(pq.read_metadata(p).num_rows for p in written(out))
    assert 0 < before < 24, "killed in the middle of the shards"

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    table = _rows(out)
    pairs = [(r["id"], r["face_index"]) for r in table.select(["id", "face_index"]).to_pylist()]
    assert len(pairs) == len(set(pairs)), "no row twice"
    images = {(r["source_shard"], r["source_key"]) for r in table.select(["source_shard", "source_key"]).to_pylist()}
    assert images == {("000.tar", f"a{i:05d}") for i in range(12)} | {("001.tar", f"b{i:05d}") for i in range(12)}
    assert " already done" in resumed.stdout


def test_a_shard_with_more_samples_than_its_ids_gets_one_row_counting_the_rest(tmp_path, face_jpegs):
    """Nothing vanishes: samples past a shard's block of ids are named by one error row (capacity 4 here)."""
    import pyarrow.fs as pafs

    from batch_parse.storage.shards import plan_shard

    shard = write_shard(tmp_path, "big.tar", face_samples(face_jpegs(6), ""))
    planned = list(plan_shard(pafs.LocalFileSystem(), str(shard), "big.tar", capacity=4))
    assert [p.source_key for p in planned[:3]] == ["00000", "00001", "00002"] and all(p.error is None for p in planned[:3])
    over = planned[3]
    assert len(planned) == 4 and over.error_code == "too_many_samples"
    assert over.error == ("big.tar/(after sample 3): 3 samples past the first 3 of shard big.tar are not labelled "
                          "(a shard's ids hold 3): split the shard")
    assert over.id == planned[0].id + 3 and len({p.id for p in planned}) == 4
