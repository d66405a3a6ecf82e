"""Parquet image tables as a source: binary or Hugging Face {bytes, path} image columns, row groups read as units."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from batch_parse.pipeline.job import run_job
from batch_parse.pipeline.options import JobOptions
from batch_parse.storage.location import parse_location
from batch_parse.storage.originals import fetch_originals
from batch_parse.storage.sources import resolve_format
from batch_parse.storage.tables import ROW_BITS, TableImages, read_table_images
from shardfiles import write_table

MODEL = "stn-icnn/default"


def test_planning_reads_footers_and_rows_come_back_by_row_group(tmp_path, face_jpegs):
    faces = face_jpegs(7)
    write_table(tmp_path / "src" / "a.parquet", faces[:5], keys=[f"url-{i}" for i in range(5)], row_group_size=2)
    write_table(tmp_path / "src" / "hf" / "b.parquet", faces[5:], hf_struct=True)
    pq.write_table(pa.table({"pixels": [b"x"]}), tmp_path / "src" / "no-image.parquet")
    source = parse_location(str(tmp_path / "src"))
    assert resolve_format(source, "auto") == "parquet"
    planned = list(TableImages(source, key_column=None))
    by_key = {p.key: p for p in planned}
    assert sorted(by_key) == ["a.parquet/0", "a.parquet/1", "a.parquet/2", "a.parquet/3", "a.parquet/4",
                              "hf/b.parquet/0", "hf/b.parquet/1", "no-image.parquet/(file)"]
    bad = by_key["no-image.parquet/(file)"]
    assert bad.error_code == "not_an_image" and bad.error == (
        "no-image.parquet/(file): no column 'image' (columns: pixels): name the image column with --image-column (and --key-column)")
    rows = [by_key[f"a.parquet/{i}"] for i in range(5)]
    assert [r.id for r in rows] == list(range(rows[0].id, rows[0].id + 5)) and rows[0].id % (1 << ROW_BITS) == 0
    assert read_table_images(source, "a.parquet", rows[0].etag, [1, 2, 3], "image") == faces[1:4]  # across row groups
    assert read_table_images(source, "hf/b.parquet", "x", [1], "image") == [faces[6]]
    keyed = {p.key: p.source_key for p in TableImages(source, key_column="key") if p.source_shard == "a.parquet"}
    assert keyed == {f"a.parquet/{i}": f"url-{i}" for i in range(5)}
    missing = [p for p in TableImages(source, key_column="key") if p.source_shard == "hf/b.parquet"]
    assert len(missing) == 1 and "no key column 'key'" in missing[0].error


def test_parquet_table_job_labels_each_row_once(ray_local, tmp_path, face_jpegs):
    faces = face_jpegs(5)
    src, out = tmp_path / "src", tmp_path / "out"
    write_table(src / "part-0.parquet", faces[:3], keys=["x", "y", "z"], hf_struct=True, row_group_size=2)
    pq.write_table(pa.table({"jpg": [faces[3]]}), src / "other.parquet")  # no `image` column: one error row, not fatal
    options = dict(source=str(src), output=str(out), model=MODEL, batch_size=2, key_column="key")
    summary = run_job(JobOptions(**options))
    assert summary.exit_code == 0
    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("data/*.parquet"))])
    rows = table.select(["key", "source_shard", "source_key", "status", "error"]).to_pylist()
    good = sorted((r["source_shard"], r["source_key"]) for r in rows if r["status"] != "error")
    assert good == [("part-0.parquet", "x"), ("part-0.parquet", "y"), ("part-0.parquet", "z")]
    (bad,) = [r for r in rows if r["status"] == "error"]
    assert bad["error"].startswith("other.parquet/(file): no column 'image'")
    meta = json.loads(table.schema.metadata[b"batch_parse"])
    assert (meta["source_format"], meta["image_column"], meta["key_column"]) == ("parquet", "image", "key")
    assert fetch_originals(meta, ["part-0.parquet/2"], parse_location(str(out))) == [faces[2]]

    write_table(src / "part-1.parquet", faces[4:], keys=["w"], hf_struct=True)
    again = run_job(JobOptions(**options))
    assert (again.listed, again.already_done) == (5, 4)


def test_a_file_with_more_rows_than_its_ids_gets_one_row_counting_the_rest(tmp_path, face_jpegs):
    """Nothing vanishes: rows past a file's block of ids are named by one error row (capacity 4 here: 3 rows + that row)."""
    import pyarrow.fs as pafs

    from batch_parse.storage.tables import plan_table

    path = write_table(tmp_path / "big.parquet", face_jpegs(6), keys=[f"k{i}" for i in range(6)], row_group_size=2)
    planned = list(plan_table(pafs.LocalFileSystem(), str(path), "big.parquet", "image", "key", capacity=4))
    assert [p.source_key for p in planned[:3]] == ["k0", "k1", "k2"] and all(p.error is None for p in planned[:3])
    over = planned[3]
    assert len(planned) == 4 and over.error_code == "too_many_rows"
    assert over.error == ("big.parquet/(after row 3): 3 rows past the first 3 of big.parquet are not labelled "
                          "(a file's ids hold 3): split the file")
    assert over.id == planned[0].id + 3 and len({p.id for p in planned}) == 4


def test_originals_by_a_key_that_names_no_container_are_one_line_not_found(tmp_path, face_jpegs):
    from batch_parse.storage.originals import _from_shards
    from batch_parse.storage.tables import fetch_table_images

    write_table(tmp_path / "a.parquet", face_jpegs(2))
    source = parse_location(str(tmp_path))
    got = fetch_table_images(source, ["a.parquet/1", "photo.jpg"], "image")
    assert got[0] == face_jpegs(2)[1] and (got[1].code, got[1].message) == ("not_found", "photo.jpg: not a row of a .parquet file")
    (bad,) = _from_shards(source, ["photo.jpg"])
    assert (bad.code, bad.message) == ("not_found", "photo.jpg: not a key inside a .tar shard")
