"""Everyday switches: --version, `run --dry-run`, `progress`, a file as SOURCE, argument errors before torch and Ray.

Every command runs as a user runs it: `python -m batch_parse.cli` in a fresh interpreter, on real
files (data files with the real schema, sealed by the real commit protocol), and on a real S3
server (SeaweedFS) where S3 matters.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from datafiles import data_file, faces
from PIL import Image

import batch_parse
from batch_parse.output.layout import OutputLayout
from batch_parse.pipeline import commit
from batch_parse.output import lease
from batch_parse.storage.location import parse_location
from batch_parse.storage.manifest import object_id, write_manifest
from batch_parse.storage.objects import ObjectInfo

REPO = Path(__file__).resolve().parents[1]
KEYS = [f"img{i}.jpg" for i in range(8)]
ID = {key: object_id(key) for key in KEYS}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`batch-parse ARGS` in a fresh interpreter, from this checkout."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "batch_parse.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=environment, check=False)


def fields(stdout: str) -> dict[str, str]:
    """`name:   value` lines as {name: value} (the first of each name)."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        name, _, value = line.partition(":")
        out.setdefault(name.strip(), value.strip())
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder`: (size, mtime_ns); folders with size -1."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(folder))] = (-1 if path.is_dir() else info.st_size, info.st_mtime_ns)
    return found


def photos(folder: Path, keys: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, key in enumerate(keys):
        Image.new("RGB", (32, 24), (10 * i, 80, 160)).save(folder / key, quality=90)
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return folder


def output_with_history(output: Path) -> OutputLayout:
    """An output mid-way, as runs leave it (ids of KEYS[i] = image i):

    sealed by recover (covered by the index): 0 and 1 no_face, 2 with two faces, 3 a retryable
    fetch_failed error row; written after (no index covers it): 4 complete, 5 with one of its two faces;
    staged by a run, not published: 6 complete.
    """
    layout = OutputLayout(parse_location(str(output)))
    data = output / "data"
    data_file(data / "a.parquet", [(ID["img0.jpg"], None, 0, "no_face", None), (ID["img1.jpg"], None, 0, "no_face", None),
                                   *faces(ID["img2.jpg"], 2)])
    data_file(data / "b.parquet", [(ID["img3.jpg"], None, 0, "error", "fetch_failed")])
    fs = pafs.LocalFileSystem()
    commit.recover(fs, layout.data_dir, layout.index_dir)  # seals a and b (no retry: the error row stays)
    assert list((output / ".batch-parse" / "index").glob("*.parquet"))
    data_file(data / "c.parquet", [*faces(ID["img4.jpg"], 1), *faces(ID["img5.jpg"], 2, indexes=[0])])
    data_file(output / ".batch-parse" / "staging" / "run-1" / "d.parquet", faces(ID["img6.jpg"], 1))
    return layout


def write_run_manifest(layout: OutputLayout, keys: list[str], stamp: str = "20261202T101500000000Z") -> None:
    """The manifest a run writes when it sets out to label `keys`."""
    fs = pafs.LocalFileSystem()
    Path(layout.manifests_dir).mkdir(parents=True, exist_ok=True)
    write_manifest([ObjectInfo(k, 100, f"e{k}") for k in keys], f"{layout.manifests_dir}/{stamp}.parquet", fs)


# --- --version -----------------------------------------------------------------------------------


def test_version_is_pyproject_version():
    pyproject = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE).group(1)
    assert version == "0.5.0"
    assert batch_parse.__version__ == version
    done = cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"batch-parse {version}"


# --- run --dry-run ---------------------------------------------------------------------------------


def test_dry_run_counts_listed_done_and_to_do_and_writes_nothing(tmp_path: Path):
    source = photos(tmp_path / "photos", KEYS[:6])
    output = tmp_path / "labels"
    output_with_history(output)
    before = snapshot(output)

    done = cli("run", str(source), str(output), "--dry-run")
    assert done.returncode == 0, done.stderr
    got = fields(done.stdout)
    assert got["listed"] == "6 image(s)"
    # 0, 1, 2 indexed, 4 complete in an unindexed file; 3's row is a retryable error (redone), 5 incomplete.
    assert got["done"] == "4 already in the output"
    assert got["to do"] == "2 image(s), 1 of them retried (retryable error rows)"
    assert got["skipped"] == "2 (1 non-image, 1 system), e.g. notes.txt, .DS_Store"
    assert got["checks"].startswith("1 data file(s) not yet indexed")
    assert got["staged"].startswith("1 file(s)")
    assert snapshot(output) == before  # no lease, no manifest, no record, no index written or removed

    kept = cli("run", str(source), str(output), "--dry-run", "--no-retry-errors")
    assert kept.returncode == 0, kept.stderr
    got = fields(kept.stdout)
    assert (got["done"], got["to do"]) == ("5 already in the output", "1 image(s)")
    assert got["kept"].startswith("1 image(s) with retryable error rows")
    assert snapshot(output) == before


def test_a_real_run_then_dry_run_and_progress_agree(tmp_path: Path):
    """A real small run (local Ray, the shipped model), then the switches on what it wrote."""
    source = photos(tmp_path / "photos", KEYS[:2])
    output = tmp_path / "labels"
    ran = cli("run", str(source), str(output), "--faces", "whole-image", "--batch-size", "2")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    finished = fields(cli("progress", str(output)).stdout)
    assert (finished["done"], finished["pending"]) == ("2 of 2 (100.0%)", "0")
    assert finished["lease"] == "none (no run is writing to this output)"

    photos(source, KEYS[:3])  # one new photo (the others rewritten with the same names: same ids)
    before = snapshot(output)
    dry = fields(cli("run", str(source), str(output), "--faces", "whole-image", "--dry-run").stdout)
    assert (dry["listed"], dry["done"], dry["to do"]) == ("3 image(s)", "2 already in the output", "1 image(s)")
    assert "checks" not in dry and "staged" not in dry  # the run sealed everything it wrote
    assert snapshot(output) == before


def test_dry_run_on_a_new_output_creates_nothing(tmp_path: Path):
    source = photos(tmp_path / "photos", KEYS[:3])
    output = tmp_path / "new-labels"
    done = cli("run", str(source), str(output), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert fields(done.stdout)["to do"] == "3 image(s)"
    assert not output.exists()


def test_dry_run_on_s3_lists_the_bucket_and_writes_nothing_there(s3_server, tmp_path: Path):
    bucket = s3_server.make_bucket("dry-run-test")
    client = s3_server.client()
    for path in sorted(photos(tmp_path / "photos", KEYS[:3]).glob("*.jpg")):
        client.put_object(Bucket=bucket, Key=f"in/{path.name}", Body=path.read_bytes())
    local = tmp_path / "labels"  # one image already done, sealed as a run seals it
    data_file(local / "data" / "a.parquet", faces(object_id("in/img1.jpg"), 1))  # on S3 an id is of the whole key
    layout = OutputLayout(parse_location(str(local)))
    commit.recover(pafs.LocalFileSystem(), layout.data_dir, layout.index_dir)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"out/{path.relative_to(local)}", Body=path.read_bytes())
    before = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"])

    done = cli("run", f"s3://{bucket}/in", f"s3://{bucket}/out", "--endpoint-url", s3_server.endpoint_url, "--dry-run")
    assert done.returncode == 0, done.stderr
    got = fields(done.stdout)
    assert (got["listed"], got["done"], got["to do"]) == ("3 image(s)", "1 already in the output", "2 image(s)")
    after = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"])
    assert after == before


def test_dry_run_refuses_another_source_as_the_run_would(tmp_path: Path):
    source, other = photos(tmp_path / "a", KEYS[:2]), photos(tmp_path / "b", KEYS[:2])
    output = tmp_path / "labels"
    (output / ".batch-parse").mkdir(parents=True)
    (output / ".batch-parse" / "source.json").write_text(json.dumps({"source": str(source), "endpoint": None}))
    done = cli("run", str(other), str(output), "--dry-run")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: output {output} already holds labels of source {source}; refusing source {other}: use another output"]


# --- progress ----------------------------------------------------------------------------------------


def test_progress_mid_way(tmp_path: Path):
    output = tmp_path / "labels"
    layout = output_with_history(output)
    write_run_manifest(layout, ["img0.jpg"], stamp="20261201T000000000000Z")  # an older run's
    write_run_manifest(layout, KEYS[2:])  # the latest run set out to do images 2..7
    held = lease.acquire(layout.location)
    try:
        before = snapshot(output)
        done = cli("progress", str(output))
        assert done.returncode == 0, done.stderr
        got = fields(done.stdout)
        assert got["latest"].startswith("run listed at 2026-12-02 10:15:00 UTC: 6 image(s) to do")
        assert got["done"] == "2 of 6 (33.3%)"  # 2 (indexed) and 4 (not yet indexed)
        assert got["pending"] == "2"  # 5 (one face of two) and 7 (nothing written)
        assert got["staged"].startswith("1 ")  # 6
        assert got["retryable"].startswith("1 ")  # 3
        assert got["errors"] == "1 retryable error row(s) in the output: fetch_failed 1"
        assert got["lease"].startswith(f"held by {held.holder}; expires ")
        assert got["images"] == "5 complete in 3 data file(s), 1 not yet checked by a run"
        assert got["staging"].startswith("1 file(s), 1 row(s) not published")
        assert len(done.stdout.splitlines()) <= 24  # one screen

        as_json = cli("progress", str(output), "--json")
        assert as_json.returncode == 0, as_json.stderr
        report = json.loads(as_json.stdout)
        assert {k: report[k] for k in ("set_out", "done", "pending", "staged", "retryable")} == {
            "set_out": 6, "done": 2, "pending": 2, "staged": 1, "retryable": 1}
        assert report["retryable_rows"] == {"fetch_failed": 1}
        assert report["lease"]["live"] is True and report["lease"]["holder"] == held.holder
        assert report["images"] == 5 and report["data_files"] == 3 and report["unindexed_files"] == 1
        assert report["staged_files"] == 1 and report["staged_rows"] == 1
        assert snapshot(output) == before  # read only
    finally:
        held.release()
    after = json.loads(cli("progress", str(output), "--json").stdout)
    assert after["lease"] is None


def test_progress_on_a_finished_output(tmp_path: Path):
    output = tmp_path / "labels"
    layout = OutputLayout(parse_location(str(output)))
    data_file(output / "data" / "a.parquet", [*faces(ID["img0.jpg"], 3), (ID["img1.jpg"], None, 0, "no_face", None),
                                              (ID["img2.jpg"], None, 0, "error", "truncated")])
    commit.recover(pafs.LocalFileSystem(), layout.data_dir, layout.index_dir)
    write_run_manifest(layout, KEYS[:3])
    done = cli("progress", str(output))
    assert done.returncode == 0, done.stderr
    got = fields(done.stdout)
    assert got["done"] == "3 of 3 (100.0%)"
    assert (got["pending"], got["retryable"]) == ("0", "0")  # a truncated image is final, not retryable
    assert "staged" not in got and "errors" not in got and "staging" not in got
    assert got["lease"] == "none (no run is writing to this output)"
    assert got["images"] == "3 complete in 1 data file(s)"


def test_progress_of_an_output_on_s3(s3_server, tmp_path: Path):
    """The same read on S3: data, index, manifest and staging as objects, the lease a live one on S3."""
    local = tmp_path / "labels"
    layout = output_with_history(local)
    write_run_manifest(layout, KEYS[2:])
    bucket = s3_server.make_bucket("progress-test")
    client = s3_server.client()
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        # Index covers name files by size and mtime: an uploaded copy has other mtimes, so on S3 every
        # data file is unindexed here (as after `aws s3 sync`), and still read right.
        client.put_object(Bucket=bucket, Key=f"out/{path.relative_to(local)}", Body=path.read_bytes())
    output = parse_location(f"s3://{bucket}/out", s3_server.endpoint_url)
    held = lease.acquire(output)
    try:
        done = cli("progress", f"s3://{bucket}/out", "--endpoint-url", s3_server.endpoint_url, "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert {k: report[k] for k in ("set_out", "done", "pending", "staged", "retryable")} == {
            "set_out": 6, "done": 2, "pending": 2, "staged": 1, "retryable": 1}
        assert report["lease"]["holder"] == held.holder and report["lease"]["live"] is True
        assert report["data_files"] == 3
    finally:
        held.release()


# --- a file as SOURCE; argument errors before torch and Ray ----------------------------------------------


def test_a_file_given_as_source_says_so(tmp_path: Path):
    photo = photos(tmp_path / "photos", ["one.jpg"]) / "one.jpg"
    done = cli("run", str(photo), str(tmp_path / "labels"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        (f"Error: source {photo} is a file, not a folder: give the folder that holds the images "
         "(a list of keys goes in --object-list, with the folder as SRC)")]
    assert not (tmp_path / "labels").exists()


# A fresh interpreter runs the command as `batch-parse` does, then says which heavy modules it had
# imported by the time the error ended the command.
_PROBE = textwrap.dedent(
    """
    import sys
    from batch_parse.cli.main import cli
    try:
        cli.main(sys.argv[1:], prog_name="batch-parse")
    except SystemExit as e:
        print("exit", e.code, "torch:", "torch" in sys.modules, "ray:", "ray" in sys.modules)
    """
)


@pytest.mark.parametrize(
    "args, error",
    [
        (["run", "{file}", "{out}"], "is a file, not a folder"),
        (["run", "{missing}", "{out}"], "source folder not found"),
        (["run", "{missing}", "{out}", "--dry-run"], "source folder not found"),
        (["run", "{folder}", "gs://bucket/out"], "unsupported location scheme 'gs://'"),
        (["run", "s3://Bad_Bucket/in", "{out}"], "invalid S3 bucket name"),
        (["run", "{folder}", "{out}", "--batch-size", "0"], "batch_size: must be >= 1"),
        (["run", "{folder}", "{out}", "--faces", "some"], "Invalid value for '--faces'"),
        (["run", "{folder}", "{out}", "--model", "no-such-weights"], "no weights named 'no-such-weights'"),
        (["run", "{folder}", "{file}"], "is a file, not a folder"),
        (["progress", "{missing}"], "output location not found"),
        (["progress", "{folder}"], "is no batch-parse output"),
        (["progress", "s3://Bad_Bucket/out"], "invalid S3 bucket name"),
        (["inspect", "{missing}"], "output location not found"),
        (["export", "{missing}", "{out}", "--to", "coco"], "output location not found"),
    ],
)
def test_argument_errors_come_before_torch_and_ray(tmp_path: Path, args: list[str], error: str):
    folder = photos(tmp_path / "photos", ["one.jpg"])
    names = {"file": str(folder / "one.jpg"), "missing": str(tmp_path / "nope"), "folder": str(folder),
             "out": str(tmp_path / "labels")}
    argv = [a.format(**names) for a in args]
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert done.stdout.strip().endswith("torch: False ray: False"), done.stdout + done.stderr
    assert not done.stdout.startswith("exit 0"), done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and error in lines[0], done.stderr
