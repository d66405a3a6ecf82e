"""The labeling job end to end: real S3 server, real local Ray, real JPEGs and the bad-input corpus."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from batch_parse.labels import CLASS_NAMES, PART_NAMES
from batch_parse.pipeline import commit
from batch_parse.pipeline.job import run_job
from batch_parse.pipeline.options import JobOptions
from batch_parse.pipeline.schema import read_metadata
from batch_parse.storage.location import parse_location
from batch_parse.storage.manifest import object_id
from batch_parse.storage.s3 import pyarrow_filesystem
from corpus import EXPECTED, bad_inputs, shared_dir

MODEL = "stn-icnn/default"


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """One local Ray for the module, started after the S3 credentials are in the environment."""
    import ray

    from batch_parse.pipeline.job import connect_ray

    connect_ray()
    yield
    ray.shutdown()


def _put(s3_server, bucket: str, objects: dict[str, bytes]) -> None:
    client = s3_server.client()
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def _read_output(uri: str, endpoint_url: str | None) -> tuple[list, "pq.Table"]:
    location = parse_location(uri)
    fs = pyarrow_filesystem(location, endpoint_url)
    files = commit.data_files(fs, location.fs_path())
    tables = []
    for path in files:
        with fs.open_input_file(path) as f:
            tables.append(pq.read_table(f))
    import pyarrow as pa

    return files, pa.concat_tables(tables) if tables else None


def _options(src: str, dst: str, endpoint: str | None, **kw) -> JobOptions:
    return JobOptions(source=src, output=dst, model=kw.pop("model", MODEL), endpoint_url=endpoint, batch_size=8, **kw)


def test_s3_job_bad_inputs_incremental_and_versions(s3_server, ray_local, face_jpegs, tmp_path):
    bucket = s3_server.make_bucket("jobin")
    s3_server.make_bucket("jobout")
    faces = {f"faces/{i:03d}.jpg": data for i, data in enumerate(face_jpegs(6))}
    bad = {f"faces/bad/{name}": data for name, data in bad_inputs().items()}
    _put(s3_server, bucket, {**faces, **bad, "faces/notes.txt": b"not an image extension"})
    src, dst = "s3://jobin/faces", "s3://jobout/labels"

    summary = run_job(_options(src, dst, s3_server.endpoint_url, rows_per_file=10))
    assert summary.listed == len(faces) + len(bad)
    assert summary.skipped_non_image == 1
    files, table = _read_output(summary.output_dir, s3_server.endpoint_url)
    assert len(files) >= 2, "rows_per_file must bound the files"
    rows = {r["key"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows == len(faces) + len(bad)
    assert len(set(table["id"].to_pylist())) == table.num_rows
    for key, row in rows.items():
        assert row["id"] == object_id(key)
    meta = read_metadata(table.schema)
    assert meta["class_names"] == list(CLASS_NAMES) and meta["source"] == src

    for name, expected in EXPECTED.items():
        row = rows[f"faces/bad/{name}"]
        if expected.code == "ok":
            assert row["status"] == "ok", (name, row["error"])
            assert (row["width"], row["height"]) == expected.size, name
        else:
            assert row["status"] == "error" and row["error_code"] == expected.code, (name, row["error_code"])
            assert "\n" not in row["error"] and row["label_map"] is None
    assert summary.errors == {code: sum(1 for e in EXPECTED.values() if e.code == code) for code in summary.errors}

    for key in faces:
        row = rows[key]
        assert row["status"] == "ok"
        label_map = np.asarray(Image.open(io.BytesIO(row["label_map"])))
        assert label_map.shape == (200, 200) and label_map.max() < len(CLASS_NAMES)
        counts = np.bincount(label_map.ravel(), minlength=len(CLASS_NAMES))
        assert [row[f"pixels_{c}"] for c in CLASS_NAMES] == counts.tolist()
        for part in PART_NAMES:
            assert len(row[f"{part}_box"]) == 4 and 0.0 <= row[f"{part}_confidence"] <= 1.0
            if row[f"{part}_crop"] is not None:
                Image.open(io.BytesIO(row[f"{part}_crop"])).verify()

    # Nothing new: nothing written.
    again = run_job(_options(src, dst, s3_server.endpoint_url))
    assert again.rows_written == 0 and again.already_done == summary.listed and not again.new_files

    # New objects, plus one deleted between listing and fetch is impossible to stage here, so:
    # only the two new ones are processed.
    _put(s3_server, bucket, {"faces/new/a.jpg": face_jpegs(8)[6], "faces/new/b.jpg": face_jpegs(8)[7]})
    third = run_job(_options(src, dst, s3_server.endpoint_url))
    assert third.rows_written == 2 and third.already_done == summary.listed
    _, table = _read_output(summary.output_dir, s3_server.endpoint_url)
    assert table.num_rows == summary.listed + 2 and len(set(table["id"].to_pylist())) == table.num_rows

    # Other weights: their own folder, the default's output untouched.
    from batch_parse.model.convert import convert_checkpoints

    fixture = shared_dir() / "fixtures" / "official" / "checkpoints"
    other = convert_checkpoints([fixture / "AB_like_e0de5954.pth.tar", fixture / "C_like_c1f2ab1a.pth.tar"], tmp_path / "other.safetensors")
    fourth = run_job(_options(src, dst, s3_server.endpoint_url, model=str(other)))
    assert fourth.output_dir != summary.output_dir and fourth.rows_written == summary.listed + 2
    _, table = _read_output(summary.output_dir, s3_server.endpoint_url)
    assert table.num_rows == summary.listed + 2


def test_object_deleted_after_listing_is_an_error_row(s3_server, ray_local, face_jpegs, tmp_path):
    from batch_parse.pipeline import stages

    bucket = s3_server.make_bucket("gone")
    _put(s3_server, bucket, {"a.jpg": face_jpegs(1)[0]})
    s3_server.client().delete_object(Bucket=bucket, Key="a.jpg")
    batch = {"id": np.array([1]), "key": np.array(["a.jpg"], dtype=object), "size": np.array([1]), "etag": np.array(["x"], dtype=object)}
    out = stages.fetch_and_decode(batch, "s3://gone", s3_server.endpoint_url, 50_000_000)
    assert out["error_code"][0] == "not_found"


def _kill_when(path: Path, proc: subprocess.Popen, condition, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"job ended before it could be killed: {proc.stdout.read()[-2000:] if proc.stdout else ''}")
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("job never reached the kill point")


def test_sigkill_mid_run_then_resume_is_exactly_once(face_jpegs, tmp_path):
    """Kill the whole job (driver, local Ray, workers) with SIGKILL after a first commit, rerun."""
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    faces = face_jpegs(40)
    for i, data in enumerate(faces):
        (src / f"{i:03d}.jpg").write_bytes(data)
    command = [sys.executable, "-m", "batch_parse.cli", "run", str(src), str(dst), "--batch-size", "4", "--rows-per-file", "4"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def committed() -> bool:
        return any(p.stat().st_size > 0 for p in dst.glob("*/data/*.parquet"))

    _kill_when(dst, proc, committed)
    before = [p for p in dst.glob("*/data/*.parquet")]
    assert before, "the kill happened after a commit"

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = int(resumed.stdout.split(" already done")[0].rsplit(" ", 1)[-1]) if " already done" in resumed.stdout else None
    assert done is not None and 0 < done < len(faces), resumed.stdout
    files = sorted(dst.glob("*/data/*.parquet"))
    ids = np.concatenate([pq.read_table(p, columns=["id"])["id"].to_numpy() for p in files])
    expected = sorted(object_id(f"{i:03d}.jpg") for i in range(len(faces)))
    assert sorted(ids.tolist()) == expected, "every input exactly once: none missing, none duplicated"
