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
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from batch_parse.labels import PART_NAMES
from batch_parse.model.weights import REGISTRY, weights_class_names
from batch_parse.pipeline import commit
from batch_parse.pipeline.job import run_job
from batch_parse.pipeline.options import JobOptions
from batch_parse.output.schema import read_metadata
from batch_parse.storage.location import parse_location
from batch_parse.storage.manifest import object_id
from datafiles import written
from batch_parse.storage.s3 import pyarrow_filesystem
from corpus import EXPECTED, bad_inputs, group_jpegs, shared_dir

MODEL = "stn-icnn/default"


def _put(s3_server, bucket: str, objects: dict[str, bytes]) -> None:
    client = s3_server.client()
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def _read_output(uri: str, endpoint_url: str | None) -> tuple[list, "pq.Table"]:
    location = parse_location(uri, endpoint_url)
    fs = pyarrow_filesystem(location)
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
    by_key = _rows_by_key(table)
    assert set(by_key) == set(faces) | set(bad)
    for key, image_rows in by_key.items():
        assert {r["id"] for r in image_rows} == {object_id(key)}
    meta = read_metadata(table.schema)
    # The file lists the default model's classes (a prefix of labels.CLASS_NAMES) and has one
    # pixels_<class> column each.
    classes = weights_class_names(REGISTRY["stn-icnn/default"])
    assert meta["class_names"] == list(classes) and meta["source"] == src
    assert [c for c in table.column_names if c.startswith("pixels_")] == [f"pixels_{c}" for c in classes]
    assert meta["schema_version"] == 2 and meta["faces"] == "all" and meta["detector"] == "mtcnn"

    for name, expected in EXPECTED.items():
        (row, *more) = by_key[f"faces/bad/{name}"]
        if expected.code == "ok":
            # Decoded: faces, or one no_face row (a 48x40 animation has no face to find).
            assert row["status"] in ("ok", "no_face"), (name, row["error"])
            assert (row["width"], row["height"]) == expected.size, name
        else:
            assert not more and row["status"] == "error" and row["error_code"] == expected.code, (name, row["error_code"])
            assert "\n" not in row["error"] and row["label_map"] is None and row["face_count"] == 0
    assert summary.errors == {code: sum(1 for e in EXPECTED.values() if e.code == code) for code in summary.errors}

    for key in faces:
        # Each UTKFace crop holds one frontal face the detector finds.
        (row,) = by_key[key]
        assert row["status"] == "ok" and row["face_index"] == 0 and row["face_count"] == 1
        assert len(row["landmarks"]) == 10 and 0 < row["face_score"] <= 1 and len(row["transform"]) == 6
        label_map = np.asarray(Image.open(io.BytesIO(row["label_map"])))
        x, y = row["label_map_x"], row["label_map_y"]
        assert 0 <= x and 0 <= y and x + label_map.shape[1] <= 200 and y + label_map.shape[0] <= 200
        assert label_map.max() < len(classes)
        counts = np.bincount(label_map.ravel(), minlength=len(classes))
        assert [row[f"pixels_{c}"] for c in classes] == counts.tolist()
        for part in PART_NAMES:
            assert len(row[f"{part}_box"]) == 4 and len(row[f"{part}_window"]) == 8
            assert 0.0 <= row[f"{part}_confidence"] <= 1.0
            if row[f"{part}_crop"] is not None:
                Image.open(io.BytesIO(row[f"{part}_crop"])).verify()

    # Nothing new: nothing written.
    again = run_job(_options(src, dst, s3_server.endpoint_url))
    assert again.rows_written == 0 and again.already_done == summary.listed and not again.new_files

    # A data object rewritten with the same bytes (a sync tool, a restore): new LastModified, no row lost.
    client = s3_server.client()
    key = files[0].split("/", 1)[1]
    client.put_object(Bucket="jobout", Key=key, Body=client.get_object(Bucket="jobout", Key=key)["Body"].read())
    rewritten = run_job(_options(src, dst, s3_server.endpoint_url))
    assert rewritten.changed_files == 1 and rewritten.rows_written == 0 and rewritten.already_done == summary.listed
    assert _read_output(summary.output_dir, s3_server.endpoint_url)[1].num_rows == summary.rows_written

    # New objects, plus one deleted between listing and fetch is impossible to stage here, so:
    # only the two new ones are processed.
    _put(s3_server, bucket, {"faces/new/a.jpg": face_jpegs(8)[6], "faces/new/b.jpg": face_jpegs(8)[7]})
    third = run_job(_options(src, dst, s3_server.endpoint_url))
    assert third.rows_written == 2 and third.already_done == summary.listed
    _, table = _read_output(summary.output_dir, s3_server.endpoint_url)
    assert table.num_rows == summary.rows_written + 2
    assert_exactly_once(table, set(faces) | set(bad) | {"faces/new/a.jpg", "faces/new/b.jpg"})

    # Other weights: one dataset holds one model's labels, so they are refused in one line and the
    # output is untouched; in an output of their own they label everything.
    from batch_parse.model.convert import convert_checkpoints

    fixture = shared_dir() / "fixtures" / "official" / "checkpoints"
    other = convert_checkpoints([fixture / "AB_like_e0de5954.pth.tar", fixture / "C_like_c1f2ab1a.pth.tar"], tmp_path / "other.safetensors")
    # The default moves between versions, so the refusal names the version that wrote the output.
    with pytest.raises(ValueError, match=r"^output s3://jobout/labels holds labels of stn-icnn/default@\w+; refusing other@\w+: use another "
                                         r"output for these weights, or the model that wrote it \(--model stn-icnn/v4\)$"):
        run_job(_options(src, dst, s3_server.endpoint_url, model=str(other)))
    _, table = _read_output(summary.output_dir, s3_server.endpoint_url)
    assert table.num_rows == summary.rows_written + 2
    fourth = run_job(_options(src, "s3://jobout/labels-other", s3_server.endpoint_url, model=str(other)))
    assert fourth.output_dir != summary.output_dir and fourth.listed == summary.listed + 2 and fourth.already_done == 0


def _rows_by_key(table) -> dict[str, list[dict]]:
    by_key: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        by_key.setdefault(row["key"], []).append(row)
    return by_key


def assert_exactly_once(table, keys: set[str]) -> None:
    """Every image exactly once: each key's rows are its faces 0..n-1 with face_count n, or one
    no_face/error row; no (id, face_index) twice, no image missing, nothing else."""
    by_key = _rows_by_key(table)
    assert set(by_key) == keys, "no image missing, no stranger"
    for key, rows in by_key.items():
        statuses = {r["status"] for r in rows}
        if statuses == {"ok"}:
            assert sorted(r["face_index"] for r in rows) == list(range(len(rows))), key
            assert {r["face_count"] for r in rows} == {len(rows)}, key
        else:
            assert len(rows) == 1 and rows[0]["face_count"] == 0 and rows[0]["face_index"] is None, (key, statuses)


def test_face_modes_on_group_photos(ray_local, tmp_path):
    src = tmp_path / "groups"
    src.mkdir()
    for i, data in enumerate(group_jpegs(2, faces_per_image=3)):
        (src / f"group{i}.jpg").write_bytes(data)
    Image.new("RGB", (300, 200), (30, 120, 200)).save(src / "sky.jpg")  # nothing to find
    counts, tables = {}, {}
    for mode in ("all", "largest", "whole-image"):
        summary = run_job(_options(str(src), str(tmp_path / mode), None, faces=mode))
        _, table = tables[mode] = _read_output(summary.output_dir, None)
        assert_exactly_once(table, {"group0.jpg", "group1.jpg", "sky.jpg"})
        by_key = _rows_by_key(table)
        counts[mode] = {k: len(v) if v[0]["status"] == "ok" else 0 for k, v in by_key.items()}
        assert read_metadata(table.schema)["faces"] == mode
        if mode == "whole-image":
            for rows in by_key.values():
                (row,) = rows
                assert row["status"] == "ok" and row["face_score"] is None and row["landmarks"] is None
                assert row["transform"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
                assert (row["label_map_x"], row["label_map_y"]) == (0, 0)
                assert row["face_box"] == [0.0, 0.0, float(row["width"]), float(row["height"])]
    # Three real frontal faces per group photo, the detector finds each; the plain sky has none.
    assert counts["all"] == {"group0.jpg": 3, "group1.jpg": 3, "sky.jpg": 0}
    assert counts["largest"] == {"group0.jpg": 1, "group1.jpg": 1, "sky.jpg": 0}
    assert counts["whole-image"] == {"group0.jpg": 1, "group1.jpg": 1, "sky.jpg": 1}
    # Faces of one photo sit side by side: their label map regions do not overlap and lie in the photo.
    for key, rows in _rows_by_key(tables["all"][1]).items():
        if key == "sky.jpg":
            assert rows[0]["status"] == "no_face" and rows[0]["width"] == 300
            continue
        spans = sorted((r["label_map_x"], r["face_box"][0]) for r in rows)
        assert all(r["label_map_x"] >= 0 and r["label_map_y"] >= 0 for r in rows)
        assert [s[1] for s in spans] == sorted(s[1] for s in spans)


def test_object_deleted_after_listing_is_an_error_row(s3_server, ray_local, face_jpegs, tmp_path):
    from batch_parse.pipeline import stages

    bucket = s3_server.make_bucket("gone")
    _put(s3_server, bucket, {"a.jpg": face_jpegs(1)[0]})
    s3_server.client().delete_object(Bucket=bucket, Key="a.jpg")
    batch = {"id": np.array([1]), "key": np.array(["a.jpg"], dtype=object), "size": np.array([1]), "etag": np.array(["x"], dtype=object)}
    out = stages.fetch_and_decode(batch, parse_location("s3://gone", s3_server.endpoint_url), 50_000_000)
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
    """Kill the whole job (driver, local Ray, workers) with SIGKILL after a first commit, rerun.

    Multi-face photos (3 faces each) with 4 rows per file: an image's faces straddle files, so a
    kill can leave an image partly committed; the rerun must redo exactly the unfinished images."""
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    names = [f"{i:03d}.jpg" for i in range(30)]
    photos = face_jpegs(15) + group_jpegs(15, faces_per_image=3)
    for name, data in zip(names, photos):
        (src / name).write_bytes(data)
    command = [sys.executable, "-m", "batch_parse.cli", "run", str(src), str(dst), "--batch-size", "4", "--rows-per-file", "4"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    _kill_when(dst, proc, lambda: bool(written(dst)))
    assert written(dst), "the kill happened after a file was written"

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = int(resumed.stdout.split(" already done")[0].rsplit(" ", 1)[-1]) if " already done" in resumed.stdout else None
    assert done is not None and 0 < done < len(names), resumed.stdout
    files = sorted(dst.glob("data/*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in files])
    assert_exactly_once(table, set(names))
    assert sum(r["face_count"] for r in table.select(["face_count"]).to_pylist()) >= 45, "the group photos' faces are there"


def test_partly_committed_image_is_redone_whole(ray_local, tmp_path):
    """A forged state a kill can leave: one face row of a 3-face photo missing from its file."""
    src, dst = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i, data in enumerate(group_jpegs(2, faces_per_image=3)):
        (src / f"group{i}.jpg").write_bytes(data)
    first = run_job(_options(str(src), str(dst), None))
    (path,) = Path(first.output_dir).glob("*.parquet")
    table = pq.read_table(path)
    keep = [not (r["key"] == "group0.jpg" and r["face_index"] == 1) for r in table.select(["key", "face_index"]).to_pylist()]
    pq.write_table(table.filter(pa.array(keep)), path)

    second = run_job(_options(str(src), str(dst), None))
    assert second.incomplete_images_redone == 1 and second.already_done == 1 and second.rows_written == 3
    assert "only some faces committed" in "\n".join(second.lines())
    files = sorted(Path(first.output_dir).glob("*.parquet"))
    assert_exactly_once(pa.concat_tables([pq.read_table(p) for p in files]), {"group0.jpg", "group1.jpg"})


def test_rows_to_drop_keys_on_image_and_face():
    # id 1: complete 2-face image; id 2: face 1 of 2 missing; id 3: face 0 written twice; id 4: no_face.
    ids = np.array([1, 1, 2, 3, 3, 3, 4])
    faces = np.array([0, 1, 0, 0, 1, 0, -1])
    counts = np.array([2, 2, 2, 2, 2, 2, 0])
    drop, duplicates, incomplete = commit.rows_to_drop(ids, faces, counts)
    assert drop.tolist() == [False, False, True, False, False, True, False]
    assert duplicates == 1 and incomplete.tolist() == [2]
    # An image with rows of two different runs that disagree on its face count is redone.
    drop, _, incomplete = commit.rows_to_drop(np.array([5, 5]), np.array([0, -1]), np.array([1, 0]))
    assert drop.all() and incomplete.tolist() == [5]
