"""Exactly-once that survives hand curation (issue 25): each case as a user does it to a real output.

Every case starts from a real `batch-parse run` output (the demo photos, a group photo with 4 faces,
labelled once per session by conftest's demo_output, copied per test), does what a person curating
the dataset does (imports corrections, prunes rows with pandas, copies data/, links folders, ...),
reruns the real job on it, and checks the rule of the README's "Exactly-once whatever happens to
the output": no user's row deleted, no duplicate and no partial image seen by a reader. Each test
prints its row counts before and after (pytest -s shows them).
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batch_parse.cli.main import cli
from batch_parse.demo import IMAGES_DIR
from batch_parse.export import export_output

GROUP = "group_canvas.jpg"


@pytest.fixture
def out(demo_output, tmp_path) -> Path:
    """A copy of the demo's real output, this test's to change (timestamps kept: the index still covers it)."""
    copy = tmp_path / "labels"
    shutil.copytree(demo_output, copy)
    return copy


def _run(source: Path, output: Path):
    from batch_parse.pipeline.job import run_job
    from batch_parse.pipeline.options import JobOptions

    summary = run_job(JobOptions(source=str(source), output=str(output), batch_size=4))
    print("\n".join(summary.lines()))
    return summary


def _keys(folder: Path) -> Counter:
    """(id, face_index) -> how many rows of every Parquet file under `folder` hold it (pandas' view of it)."""
    import pandas as pd

    frame = pd.read_parquet(folder)
    return Counter(zip(frame["id"].tolist(), frame["face_index"].fillna(-1).astype(int).tolist()))


def _labelstudio_review(output: Path, tmp_path: Path) -> Path:
    """Label Studio's JSON export after a reviewer accepted every prediction (as test_import does)."""
    export_output(str(output), tmp_path / "ls", "labelstudio")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    reviewed = [{"id": i + 1, "data": t["data"], "predictions": [i + 1],
                 "annotations": [{"id": 100 + i, "result": t["predictions"][0]["result"], "was_cancelled": False,
                                  "completed_by": {"id": 7, "email": "r@example.org"},
                                  "updated_at": "2026-11-30T10:15:30Z"}]} for i, t in enumerate(tasks)]  # fmt: skip
    path = tmp_path / "project-1.json"
    path.write_text(json.dumps(reviewed))
    return path


# --- case 1: human corrections are never deleted --------------------------------------------------


def test_import_into_the_original_output_is_refused(out, tmp_path):
    src = _labelstudio_review(out, tmp_path)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for target in (out / "data" / "corr", out / "corrected", out, out / ".batch-parse" / "x"):
        result = CliRunner().invoke(cli, ["import", str(src), str(target), "--from", "labelstudio", "--original", str(out)])
        assert result.exit_code == 1, result.output
        line = result.output.strip()
        assert "\n" not in line and f"{target} is inside the output {out}" in line and "import into a folder outside it" in line
    # ORIGINAL given as its data/ folder: the output is still the folder above.
    result = CliRunner().invoke(cli, ["import", str(src), str(out / "corr"), "--from", "labelstudio", "--original", str(out / "data")])
    assert result.exit_code == 1 and "is inside the output" in result.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written


def test_corrections_put_in_data_by_hand_are_never_deleted(out, tmp_path, ray_local):
    """The issue's case: corrections inside data/ were removed as duplicates by the next run. Now a run
    leaves them where they are, says so, and counts only its own rows as done."""
    src = _labelstudio_review(out, tmp_path)
    corrected = tmp_path / "labels-corrected"
    result = CliRunner().invoke(cli, ["import", str(src), str(corrected), "--from", "labelstudio", "--original", str(out)])
    assert result.exit_code == 0, result.output
    human = out / "data" / "corr" / "corrections.parquet"
    human.parent.mkdir()
    shutil.copy(corrected / "data" / "corrections.parquet", human)  # what `import OUT/data/corr` used to write
    model_rows = sum(_keys(out / "data" / name).total() for name in [p.name for p in (out / "data").glob("*.parquet")])
    human_rows = pq.read_metadata(human).num_rows
    summary = _run(IMAGES_DIR, out)
    assert summary.exit_code == 0 and summary.duplicates_removed == 0 and summary.listed == summary.already_done
    assert human.exists() and pq.read_table(human).num_rows == human_rows
    assert any(line.startswith("ignored:  1 file(s) of human corrections in data/") and "data/corr/corrections.parquet" in line
               for line in summary.lines())
    after_model = sum(pq.read_metadata(p).num_rows for p in (out / "data").glob("*.parquet"))
    print(f"case 1: model rows {model_rows} -> {after_model}, human rows {human_rows} -> {pq.read_table(human).num_rows} (kept)")
    assert after_model == model_rows
    # Readers see the model's rows once, and say what they left out.
    import batch_parse

    shutil.copytree(corrected, out / "corrected")  # the other place: OUT/corrected/data/corrections.parquet
    exported = export_output(str(out), tmp_path / "coco", "coco")
    assert exported.faces == model_rows and any(n.startswith("left out 2 file(s) of human corrections") for n in exported.notes)
    report = CliRunner().invoke(cli, ["inspect", str(out)])
    assert report.exit_code == 0 and "skipped 2 file(s) of human corrections among the model's rows" in report.output
    with pytest.warns(UserWarning, match=r"left out 1 file\(s\) of human corrections"):
        assert batch_parse.open_output(str(out)).count_rows() == model_rows


# --- case 3: a file pruned with pandas is reconciled, not left beside a relabelled copy ------------


def test_a_pandas_pruned_file_is_recognised_by_its_rows(out, ray_local):
    import pandas as pd

    files = sorted((out / "data").glob("*.parquet"))
    target = next(p for p in files if GROUP in pq.read_table(p, columns=["key"])["key"].to_pylist())
    frame = pd.read_parquet(target)
    before = _keys(out / "data")
    group = frame[frame["key"] == GROUP]
    assert len(group) == 4 and group["face_count"].iloc[0] == 4
    pruned = frame.drop(group[group["face_index"] == 3].index)  # one face's row dropped, as a user would
    pruned.to_parquet(target)  # pandas' file: our columns, not our metadata, and its index as a column
    assert b"batch_parse" not in (pq.read_schema(target).metadata or {})
    summary = _run(IMAGES_DIR, out)
    assert summary.exit_code == 0 and summary.foreign_files == []
    assert any(line.startswith("recovered: 1 data file(s) had batch-parse's rows without its metadata") for line in summary.lines())
    after = _keys(out / "data")
    print(f"case 3: rows before the prune {before.total()}, after it {before.total() - 1}, after the rerun {after.total()} "
          f"({sum(c > 1 for c in after.values())} duplicated (id, face_index))")
    assert max(after.values()) == 1 and set(after) == set(before)  # the group photo relabelled once, whole
    assert b"batch_parse" in pq.read_schema(target).metadata  # a file every reader takes as ours again
    import batch_parse

    assert batch_parse.open_output(str(out)).count_rows() == before.total()
    again = _run(IMAGES_DIR, out)
    assert again.listed == again.already_done and again.data_files_read == 0


def test_readers_take_a_pandas_rewritten_file_as_ours_before_any_rerun(out, tmp_path):
    """Between a user's pandas rewrite and the next run, readers and exports keep the file's rows
    (its pruned photo is left out, and said); an output with no file of ours left says how to fix it."""
    import pandas as pd

    import batch_parse

    (target,) = (out / "data").glob("*.parquet")  # the demo's one file, split in two as a bigger run writes them
    table = pq.read_table(target)
    rows = table.num_rows
    keys = table["key"].to_pylist()
    second = pa.compute.is_in(table["key"], pa.array([GROUP, *sorted(set(keys) - {GROUP})[:2]]))
    pq.write_table(table.filter(pa.compute.invert(second)), out / "data" / "a.parquet")
    pq.write_table(table.filter(second), out / "data" / "b.parquet")
    target.unlink()
    frame = pd.read_parquet(out / "data" / "b.parquet")
    frame.drop(frame[(frame["key"] == GROUP) & (frame["face_index"] == 3)].index).to_parquet(out / "data" / "b.parquet")
    assert b"batch_parse" not in (pq.read_schema(out / "data" / "b.parquet").metadata or {})
    with pytest.warns(UserWarning, match=r"1 image\(s\) have only some of their faces"):
        faces = batch_parse.open_output(str(out))
    assert faces.count_rows() == rows - 4 and GROUP not in faces.to_table(columns=["key"])["key"].to_pylist()
    assert set(faces.to_table(columns=["key"])["key"].to_pylist()) == set(keys) - {GROUP}
    assert faces.to_table(columns=["processed_at"])["processed_at"].null_count == 0  # pandas' timestamps read as ours
    exported = export_output(str(out), tmp_path / "coco", "coco")
    assert exported.incomplete == 1 and exported.images == len(set(keys)) - 1
    print(f"case 3b: {rows} rows, one face pruned with pandas: open_output {faces.count_rows()}, "
          f"export {exported.images} images (the pruned photo left out, said)")
    (out / "data" / "a.parquet").unlink()  # nothing of ours left to take the metadata from
    report = CliRunner().invoke(cli, ["inspect", str(out)])
    assert report.exit_code == 1 and report.output.strip().splitlines()[-1].endswith(
        "data/b.parquet holds batch-parse rows without batch-parse's metadata (rewritten by pandas or another tool?): "
        "run the same `batch-parse run` once to give it back")


# --- case 2: a copy of only data/ is checked against the source before anything counts as done ----


def test_a_copied_data_folder_refuses_another_source(out, tmp_path, face_jpegs):
    new = tmp_path / "new"
    shutil.copytree(out / "data", new / "data")  # the README calls data/ the dataset: users copy just that
    other = tmp_path / "other-photos"
    other.mkdir()
    for name, data in zip(["group_canvas.jpg", "hopper.jpg", "unseen.jpg"], face_jpegs(3)):
        (other / name).write_bytes(data)  # two names the first source has, with other photos in them
    rows = _keys(new / "data").total()
    for args in (["run", str(other), str(new)], ["run", str(other), str(new), "--dry-run"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        line = result.output.strip()
        assert "\n" not in line and f"{new}/data/" in line and f"holds labels of source {IMAGES_DIR}" in line
        assert f"refusing source {other}: use another output" in line
    print(f"case 2: rows in the copied data/ {rows} -> {_keys(new / 'data').total()}, none counted done for {other}")
    assert _keys(new / "data").total() == rows and not (new / ".batch-parse" / "source.json").exists()
    # The same copy run with its own source: every photo done, nothing relabelled, and the source recorded.
    result = CliRunner().invoke(cli, ["run", str(IMAGES_DIR), str(new)])
    assert result.exit_code == 0, result.output
    assert "11 images listed, 11 already done" in result.output
    assert json.loads((new / ".batch-parse" / "source.json").read_text())["source"] == str(IMAGES_DIR)


# --- case 6: a torn output is never read or exported as complete ---------------------------------


def _tear(out: Path) -> tuple[Path, Path]:
    """What a SIGKILL between two moves from staging to data/ leaves: the group photo's faces 0-2
    published in data/, its face 3 still in the run's staging folder (the file it was written in)."""
    target = next(p for p in sorted((out / "data").glob("*.parquet")) if GROUP in pq.read_table(p, columns=["key"])["key"].to_pylist())
    table = pq.read_table(target)
    last = pa.compute.and_(pa.compute.equal(table["key"], GROUP), pa.compute.equal(table["face_index"], 3))
    staged = out / ".batch-parse" / "staging" / "20261206T000000000000Z-4242" / "b-000000-0.parquet"
    staged.parent.mkdir(parents=True)
    pq.write_table(table.filter(last), staged)
    published = out / "data" / "a-000000-0.parquet"
    pq.write_table(table.filter(pa.compute.invert(last)), published)
    target.unlink()
    return published, staged


def test_export_and_open_output_skip_the_images_of_a_torn_output(out, tmp_path, ray_local):
    import warnings

    import batch_parse

    whole = export_output(str(out), tmp_path / "whole", "coco")
    rows = batch_parse.open_output(str(out)).count_rows()
    _tear(out)
    torn = export_output(str(out), tmp_path / "torn", "coco")
    assert (torn.images, torn.faces, torn.incomplete) == (whole.images - 1, whole.faces - 4, 1)
    assert any(n.startswith("left out 1 image(s) with only some of their faces") and GROUP in n for n in torn.notes)
    coco = json.loads((tmp_path / "torn" / "annotations.json").read_text())
    assert GROUP not in [i["file_name"] for i in coco["images"]]
    with pytest.warns(UserWarning, match=r"1 image\(s\) have only some of their faces in the output"):
        faces = batch_parse.open_output(str(out))
    assert faces.incomplete_images == 1 and faces.count_rows() == rows - 4
    assert GROUP not in faces.to_table(columns=["key"])["key"].to_pylist()
    with pytest.warns(UserWarning):
        assert batch_parse.open_output(str(out / "data")).count_rows() == rows - 4
    print(f"case 6: torn output: export {whole.images} -> {torn.images} image(s) (1 left out, said), "
          f"open_output {rows} -> {faces.count_rows()} row(s)")
    summary = _run(IMAGES_DIR, out)  # publishes the staged face: the photo is whole again, nothing relabelled
    assert summary.exit_code == 0 and summary.adopted_files == 1 and summary.listed == summary.already_done
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        faces = batch_parse.open_output(str(out))
    assert faces.incomplete_images == 0 and faces.count_rows() == rows
    assert export_output(str(out), tmp_path / "after", "coco").images == whole.images


# --- case 5: a photo reached by two paths is labelled once, and the skip is said ----------------


def test_a_folder_symlink_does_not_re_key_labelled_photos(tmp_path, face_jpegs, ray_local):
    src, labels = tmp_path / "src", tmp_path / "labels"
    (src / "zz").mkdir(parents=True)
    for i, data in enumerate(face_jpegs(3)):
        (src / "zz" / f"p{i}.jpg").write_bytes(data)
    first = CliRunner().invoke(cli, ["run", str(src), str(labels), "--faces", "whole-image", "--batch-size", "4"])
    assert first.exit_code == 0, first.output
    before = _keys(labels / "data")
    (src / "aa").symlink_to("zz")  # sorts before zz: the walk used to take aa/ and skip zz/ silently
    (src / "zz" / "same.jpg").symlink_to("p0.jpg")  # a photo linked beside itself
    (src / "outside").symlink_to(tmp_path / "elsewhere")  # a folder outside the source: its only path, followed
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "e.jpg").write_bytes(face_jpegs(4)[3])
    dry = CliRunner().invoke(cli, ["run", str(src), str(labels), "--dry-run"])
    assert dry.exit_code == 0 and "to do:    1 image(s)" in dry.output and "2 second path(s) by symlink" in dry.output, dry.output
    again = CliRunner().invoke(cli, ["run", str(src), str(labels), "--faces", "whole-image", "--batch-size", "4"])
    assert again.exit_code == 0, again.output
    assert "4 images listed, 3 already done" in again.output
    assert "skipped:  2 symlink(s) to a folder or photo the source holds by its real path (labelled once, there), " \
           "e.g. aa -> zz; zz/same.jpg -> zz/p0.jpg" in again.output
    after = pads.dataset(labels / "data", format="parquet").to_table(columns=["key"])["key"].to_pylist()
    print(f"case 5: rows {before.total()} for 3 photos; after `ln -s zz aa` and a rerun {len(after)} rows for 4 photos")
    assert sorted(after) == ["outside/e.jpg", "zz/p0.jpg", "zz/p1.jpg", "zz/p2.jpg"]


# --- case 4: an index edited to agree with itself loses to the data --------------------------------


def test_an_index_edited_to_agree_with_itself_loses_to_the_data(out, ray_local):
    (path,) = (out / ".batch-parse" / "index").glob("*.parquet")
    table = pq.read_table(path)
    group_id = pads.dataset(out / "data", format="parquet").to_table(
        columns=["id"], filter=pads.field("key") == GROUP)["id"][0].as_py()
    entries = table.filter(pa.compute.equal(table["id"], group_id))
    record = json.loads(table.schema.metadata[b"batch_parse_index"])
    for position, rows in zip(entries["file"].to_pylist(), entries["rows"].to_pylist()):
        record["covers"][position]["rows"] -= rows  # the cover's row count lowered by the same amount
    meta = {**pq.read_metadata(path).metadata, b"batch_parse_index": json.dumps(record).encode()}
    pq.write_table(table.filter(pa.compute.not_equal(table["id"], group_id)).replace_schema_metadata(meta), path)
    before = _keys(out / "data")
    summary = _run(IMAGES_DIR, out)
    assert summary.exit_code == 0 and summary.edited_index_files == 1
    assert summary.listed == summary.already_done  # the group photo is done: its rows are in the data
    assert any(line.startswith("checked:  1 index file(s) in .batch-parse/index changed since written") for line in summary.lines())
    after = _keys(out / "data")
    print(f"case 4: rows {before.total()} -> {after.total()}, {sum(c > 1 for c in after.values())} duplicated (id, face_index)")
    assert after == before
    again = _run(IMAGES_DIR, out)
    assert again.data_files_read == 0 and again.edited_index_files == 0 and again.listed == again.already_done


# --- case 7: every message names the file and what to do -----------------------------------------


def _one_line(result, *parts: str) -> str:
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "\n" not in line and "unexpected" not in line and "Traceback" not in line, line
    for part in parts:
        assert part in line, line
    return line


@pytest.mark.parametrize("body, problem", [
    ('{"holder": "h", "expires_unix": null}', "expires_unix is null, not a finite number"),
    ('{"holder": "h", "expires_unix": "abc"}', 'expires_unix is "abc", not a finite number'),
    ('{"holder": "h", "expires_unix": NaN}', "expires_unix is NaN, not a finite number"),
    ('{"holder": "h", "expires_unix": Infinity}', "expires_unix is Infinity, not a finite number"),
    ('{"holder": "h", "expires_unix": 1e30, "pid": "12a", "host": "x"}', 'pid is "12a", not a whole number'),
])
def test_a_bad_lease_is_one_line_naming_the_file(tmp_path, face_jpegs, body, problem):
    src, labels = tmp_path / "src", tmp_path / "labels"
    src.mkdir()
    (src / "a.jpg").write_bytes(face_jpegs(1)[0])
    (labels / ".batch-parse").mkdir(parents=True)
    lease = labels / ".batch-parse" / "lease.json"
    lease.write_text(body)
    for args in (["run", str(src), str(labels)], ["progress", str(labels)]):
        _one_line(CliRunner().invoke(cli, args), f"lease file {lease} is not a lease record ({problem}",
                  "remove it if no run is writing to this output")
    assert lease.read_text() == body  # never removed by us: a live run may own it


def test_a_damaged_manifest_in_progress_is_one_line_naming_it(out):
    manifests = out / ".batch-parse" / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    latest = manifests / "29990101T000000000000Z.parquet"  # the newest by name: the one progress reads
    latest.write_bytes(b"PAR1 not really")
    _one_line(CliRunner().invoke(cli, ["progress", str(out)]), f"manifest {out}/.batch-parse/manifests/{latest.name} "
              "is not a batch-parse manifest", "remove it")
    pq.write_table(pa.table({"key": ["a.jpg"]}), latest)  # Parquet, another schema
    _one_line(CliRunner().invoke(cli, ["progress", str(out)]), f"{latest.name} is not a batch-parse manifest", "remove it")
    pq.write_table(pa.table({"id": ["a"]}), latest)  # an id column of text
    _one_line(CliRunner().invoke(cli, ["progress", str(out)]), "its id column is string", "remove it")
    latest.unlink()
    assert CliRunner().invoke(cli, ["progress", str(out)]).exit_code == 0


def test_import_values_out_of_range_are_one_line(out, tmp_path):
    src = _labelstudio_review(out, tmp_path)
    tasks = json.loads(src.read_text())
    group = next(i for i, t in enumerate(tasks) if t["data"]["key"] == GROUP)

    def rect(task):
        return next(r for r in task["annotations"][0]["result"] if r["type"] == "rectanglelabels")

    cases = [
        (lambda t: t[0]["data"].update(batch_parse_id=2**70), "data.batch_parse_id 1180591620717411303424 is not an id"),
        (lambda t: t[0]["data"].update(batch_parse_id=str(2**70)), "is not an id batch-parse gives (0 to 2^63-1)"),
        (lambda t: t[0]["data"].update(batch_parse_id=-5), "data.batch_parse_id -5 is not an id"),
        (lambda t: t[0]["data"].update(batch_parse_id=True), "has no data.batch_parse_id"),
        (lambda t: rect(t[group])["value"].update(x="abc"), 'rectangle x is "abc", not a percent of the image'),
        (lambda t: rect(t[group])["value"].update(x=1e308), "rectangle x is 1e+308, not a percent of the image"),
        (lambda t: rect(t[group])["value"].update(width=float("nan")), "rectangle width is NaN, not a percent"),
        (lambda t: rect(t[group]).update(value=[1, 2]), "value is [1, 2], not an object"),
    ]
    for n, (change, message) in enumerate(cases):
        edited = json.loads(json.dumps(tasks))
        change(edited)
        path = tmp_path / f"bad-{n}.json"
        path.write_text(json.dumps(edited))
        target = tmp_path / f"corrected-{n}"
        _one_line(CliRunner().invoke(cli, ["import", str(path), str(target), "--from", "labelstudio", "--original", str(out)]),
                  message)
        assert not target.exists()


def test_onnx_manifests_are_checked_before_anything_is_read(tmp_path):
    from batch_parse.model.config import ModelConfig
    from batch_parse.model.weights import file_sha256
    from batch_parse.onnx.export import FORMAT, MANIFEST
    from batch_parse.onnx.runtime import OnnxError, read_manifest

    folder = tmp_path / "export"
    folder.mkdir()
    graphs = {}
    for name in ("stage1", "localiser", "parts"):
        (folder / f"{name}.onnx").write_bytes(name.encode())
        graphs[name] = {"file": f"{name}.onnx", "sha256": file_sha256(folder / f"{name}.onnx")}
    good = {"format": FORMAT, "detector": None, "graphs": graphs,
            "model": {"name": "stn-icnn/default", "weights_sha256": "0" * 64, "config": json.loads(ModelConfig().to_json())}}
    (folder / MANIFEST).write_text(json.dumps(good))
    assert isinstance(read_manifest(folder)["_config"], ModelConfig)
    (tmp_path / "secret").write_text("not a graph")
    outside = {**graphs, "parts": {"file": str(tmp_path / "secret"), "sha256": file_sha256(tmp_path / "secret")}}
    up = {**graphs, "parts": {"file": "../secret", "sha256": file_sha256(tmp_path / "secret")}}
    cases = [
        ({k: v for k, v in good.items() if k != "graphs"}, "`graphs` is null, not the graphs by name"),
        ({**good, "graphs": [1]}, "`graphs` is [1], not the graphs by name"),
        ({**good, "graphs": {**graphs, "parts": 1}}, "graph parts is 1, not"),
        ({**good, "graphs": {k: v for k, v in graphs.items() if k != "parts"}}, "names no graph parts"),
        ({**good, "detector": "mtcnn"}, "names no graph mtcnn_pnet, mtcnn_rnet, mtcnn_onet"),
        ({**good, "graphs": outside}, f"graph parts names '{tmp_path / 'secret'}', not a file in {folder}"),
        ({**good, "graphs": up}, "graph parts names '../secret', not a file in"),
        ({**good, "model": {**good["model"], "config": {"icnn": 5}}}, "the model config does not build"),
        ({**good, "model": {**good["model"], "config": {"stage1_size": 1, "colour": 2}}}, "the model config does not build"),
        ({**good, "model": None}, "no model record"),
    ]
    for manifest, message in cases:
        (folder / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(OnnxError, match=re.escape(message)) as caught:
            read_manifest(folder)
        assert str(folder / MANIFEST) in str(caught.value) and "export again" in str(caught.value)


def test_a_file_in_data_that_is_not_parquet_is_never_deleted(out, tmp_path):
    from batch_parse.pipeline import commit

    notes = out / "data" / "notes.parquet"
    notes.write_text("my notes, not a table")
    empty_write = out / "data" / "killed-0.parquet"  # what a kill leaves: Parquet's magic, no footer
    empty_write.write_bytes(next((out / "data").glob("*-0.parquet")).read_bytes()[:300])
    import pyarrow.fs as pafs

    state = commit.recover(pafs.LocalFileSystem(), str(out / "data"), str(out / ".batch-parse" / "index"))
    assert notes.read_text() == "my notes, not a table" and state.not_parquet == [str(notes)]
    assert not empty_write.exists() and state.removed_incomplete == [str(empty_write)]


def test_cvat_export_of_a_key_with_a_line_break_is_one_line(out, tmp_path):
    target = next(p for p in sorted((out / "data").glob("*.parquet")) if "hopper.jpg" in pq.read_table(p, columns=["key"])["key"].to_pylist())
    table = pq.read_table(target)
    keys = [k.replace("hopper.jpg", "hop\nper.jpg") for k in table["key"].to_pylist()]
    pq.write_table(table.set_column(table.schema.get_field_index("key"), "key", pa.array(keys)), target)
    result = CliRunner().invoke(cli, ["export", str(out), str(tmp_path / "cvat"), "--to", "cvat"])
    _one_line(result, "key 'hop\\nper.jpg' holds a line break, which CVAT's item list (default.txt) cannot hold",
              "--copy-images")
    assert not (tmp_path / "cvat").exists() or not any((tmp_path / "cvat").iterdir())
