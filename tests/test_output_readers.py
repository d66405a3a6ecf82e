"""The output as a dataset: every reader people use opens OUTPUT/data in one line and gets exactly the
face rows; open_output decodes them; control state is invisible; a rerun after the output was
touched, copied or migrated from the old layout labels nothing and keeps every row.

One real job (local Ray) on three demo photos, the group photo among them, makes the output.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from batch_parse.demo import IMAGES_DIR
from batch_parse.labels import CLASS_NAMES
from batch_parse.pipeline.options import JobOptions

PHOTOS = ("group_canvas.jpg", "hopper.jpg", "astronaut_small.jpg")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """(source folder, output folder, summary) of a real run."""
    import ray

    from batch_parse.pipeline.job import connect_ray, run_job

    root = tmp_path_factory.mktemp("readers")
    src = root / "photos"
    src.mkdir()
    for name in PHOTOS:
        shutil.copy(IMAGES_DIR / name, src / name)
    connect_ray()
    try:
        summary = run_job(JobOptions(source=str(src), output=str(root / "labels"), batch_size=4))
    finally:
        ray.shutdown()
    assert summary.exit_code == 0 and summary.rows_ok >= 4  # the group photo alone has four faces
    return src, root / "labels", summary


def _keys(rows) -> list[tuple]:
    return sorted((int(i), -1 if f is None or f != f else int(f)) for i, f in rows)


def _truth(out: Path) -> list[tuple]:
    table = pq.read_table(next((out / "data").glob("*.parquet")).parent, columns=["id", "face_index"])
    keys = _keys(zip(table["id"].to_pylist(), table["face_index"].to_pylist()))
    assert len(keys) == len(set(keys))
    return keys


def test_layout_holds_only_face_rows_where_readers_look(job):
    _, out, summary = job
    assert sorted(p.name for p in out.iterdir()) == [".batch-parse", "data"]
    assert all(p.suffix == ".parquet" for p in (out / "data").iterdir())
    assert len(_truth(out)) == summary.rows_written
    assert summary.output_dir == str(out / "data")


def test_pandas_pyarrow_polars_duckdb_read_the_face_rows(job):
    import duckdb
    import pandas as pd
    import polars as pl

    _, out, _ = job
    truth, data = _truth(out), str(out / "data")
    assert _keys(pd.read_parquet(data)[["id", "face_index"]].itertuples(index=False)) == truth
    assert _keys(pd.read_parquet(out)[["id", "face_index"]].itertuples(index=False)) == truth  # the dot folder is skipped
    table = pads.dataset(data, format="parquet").to_table(columns=["id", "face_index"])
    assert _keys(zip(table["id"].to_pylist(), table["face_index"].to_pylist())) == truth
    frame = pl.scan_parquet(data).select("id", "face_index").collect()
    assert _keys(frame.iter_rows()) == truth
    rows = duckdb.sql(f"select id, face_index from read_parquet('{data}/*.parquet')").fetchall()
    assert _keys(rows) == truth


def test_ray_data_and_hf_datasets_read_the_face_rows(job, tmp_path):
    import datasets
    import ray

    _, out, _ = job
    truth = _truth(out)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        for path in (out / "data", out):  # OUTPUT itself too: Ray skips the dot folder
            rows = ray.data.read_parquet(str(path)).select_columns(["id", "face_index"]).take_all()
            assert _keys((r["id"], r["face_index"]) for r in rows) == truth
    finally:
        ray.shutdown()
    for path in (out / "data", out):
        hf = datasets.load_dataset("parquet", data_dir=str(path), split="train", cache_dir=str(tmp_path / "hf"))
        assert _keys(zip(hf["id"], hf["face_index"])) == truth


def test_open_output_decodes_in_one_call(job, tmp_path):
    import batch_parse

    _, out, summary = job
    faces = batch_parse.open_output(str(out))
    assert faces.count_rows() == summary.rows_written and faces.class_names == list(CLASS_NAMES[: len(faces.class_names)])
    assert batch_parse.open_output(str(out / "data")).count_rows() == summary.rows_written
    row = next(r for r in faces.to_table().to_pylist() if r["status"] == "ok")
    face = faces.label_map(row)
    assert face.dtype == np.uint8 and face.max() < len(CLASS_NAMES)
    photo = faces.photo_label_map(row)
    assert photo.shape == (row["height"], row["width"]) and (photo > 0).sum() == (face > 0).sum()
    mouth = faces.crop(row, "mouth")
    assert mouth is None or (mouth.ndim == 3 and mouth.shape[2] == 3)
    hf = faces.to_hf(columns=["id", "face_index", "label_map", "mouth_crop"])
    first = next(r for r in hf if r["label_map"] is not None)
    assert np.asarray(first["label_map"]).ndim == 2  # a PIL image
    import ray

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        assert faces.to_ray(columns=["id", "face_index"]).count() == summary.rows_written
    finally:
        ray.shutdown()


def _rerun(src: Path, out: Path):
    from batch_parse.pipeline.job import run_job

    return run_job(JobOptions(source=str(src), output=str(out), batch_size=4))


def test_rerun_after_touch_or_copy_keeps_every_row(job, tmp_path):
    src, out, summary = job
    copy = tmp_path / "copied"
    shutil.copytree(out, copy, copy_function=shutil.copyfile)  # timestamps not kept
    later = time.time() + 100
    for path in (copy / "data").iterdir():
        os.utime(path, (later, later))
    again = _rerun(src, copy)
    assert again.rows_written == 0 and again.already_done == len(PHOTOS) and again.changed_files >= 1
    assert _truth(copy) == _truth(out)


def test_an_output_of_the_old_layout_is_moved_and_not_relabelled(job, tmp_path):
    from batch_parse.model.weights import file_sha256, resolve
    from batch_parse.pipeline.migrate import version_folder
    from batch_parse.pipeline.options import DEFAULT_MODEL

    src, out, _ = job
    old = tmp_path / "old"
    name, weights = resolve(DEFAULT_MODEL)
    version = old / version_folder(name, file_sha256(weights))
    shutil.copytree(out / "data", version / "data")  # batch-parse <= 0.4: OUTPUT/<model>-<hash>/data
    (version / "_index").mkdir()
    (version / "_index" / "old.parquet").write_bytes(b"PAR1 an index of the old format")
    (version / "_source.json").write_text((out / ".batch-parse" / "source.json").read_text())
    (old / "_lease.lock").write_bytes(b"")
    again = _rerun(src, old)
    assert again.migrated == len(list((out / "data").iterdir())) and again.rows_written == 0
    assert again.already_done == len(PHOTOS)
    assert sorted(p.name for p in old.iterdir()) == [".batch-parse", "data"]
    assert _truth(old) == _truth(out)
