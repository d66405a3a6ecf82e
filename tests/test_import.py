"""`batch-parse import`: corrections made in Label Studio and CVAT come back as face rows.

Round trips on the demo's real output (real local Ray job, the bundled photos, a group photo with
4 faces): `batch-parse export`, one face's mask changed in the tool's own format (Label Studio's
brush RLE encoded with label-studio-converter's brush module; CVAT's SegmentationClass PNG edited
in the zip), `batch-parse import`, then the change must be in that face's row and every other
face and column must be the original's. The Helen folder `--helen` writes is read with the
trainer's own dataset class and loader.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from click.testing import CliRunner
from PIL import Image

from batch_parse.cli.main import cli
from batch_parse.corrections import import_corrections
from batch_parse.corrections.helen import face_name, frame_labels
from batch_parse.corrections.labelstudio import decode_brush
from batch_parse.corrections.split import FaceRegion, split_photo, union
from batch_parse.demo import demo_images
from batch_parse.export import export_output
from batch_parse.labels import CLASS_COLORS, CLASS_NAMES, SKIN
from batch_parse.output.codec import decode_label_map
from batch_parse.output.schema import COLUMN_DOCS, CORRECTION_FIELDS

GROUP = "group_canvas.jpg"
NEW = [f.name for f in CORRECTION_FIELDS]
REVIEWER = "reviewer@example.org"
REVIEWED_AT = "2026-11-30T10:15:30.123456Z"


def _rows(path: Path) -> dict[tuple[int, int | None], dict]:
    table = pads.dataset(path / "data", format="parquet").to_table()
    return {(r["id"], r["face_index"]): r for r in table.to_pylist()}


@pytest.fixture(scope="module")
def original(demo_output) -> dict[tuple[int, int | None], dict]:
    rows = _rows(demo_output)
    assert len({r["key"] for r in rows.values()}) == len(demo_images())
    return rows


def _photo(original: dict, key: str) -> tuple[list[dict], list[FaceRegion], np.ndarray, np.ndarray]:
    """An image's rows (face_index order), their regions, and the union and owner maps the exports drew."""
    rows = sorted((r for r in original.values() if r["key"] == key), key=lambda r: r["face_index"])
    regions = [FaceRegion(r["face_index"], decode_label_map(r["label_map"]), r["label_map_x"], r["label_map_y"],
                          np.asarray(r["face_box"], np.float64)) for r in rows]  # fmt: skip
    label_map, owner = union(regions, rows[0]["width"], rows[0]["height"])
    return rows, regions, label_map, owner


def _inside(region: FaceRegion, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    x0, y0, x1, y1 = region.bounds(width, height)
    mask[y0:y1, x0:x1] = True
    return mask


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _placed_union(rows: list[dict]) -> np.ndarray:
    regions = [FaceRegion(r["face_index"], decode_label_map(r["label_map"]), r["label_map_x"], r["label_map_y"], None) for r in rows]
    return union(regions, rows[0]["width"], rows[0]["height"])[0]


def _assert_only(imported: dict, original: dict, changed: tuple[int, int], allowed: set[str]) -> None:
    """Every imported row is its original row, column for column, except `allowed` columns of `changed`."""
    for key, row in imported.items():
        want = original[key]
        for column, value in want.items():
            if key == changed and column in allowed:
                continue
            assert row[column] == value, f"{row['key']} face {key[1]}: {column} moved"


def test_correction_columns_are_documented():
    for field in CORRECTION_FIELDS:
        assert COLUMN_DOCS[field.name].startswith("Only in"), field.name


def test_brush_rle_of_label_studio_converter_decodes():
    """Our decoder reads what label-studio-converter's own encoder writes (runs and single-value literals)."""
    from label_studio_converter import brush

    rng = np.random.default_rng(0)
    for shape in ((7, 5), (64, 48), (300, 257)):
        mask = rng.random(shape) < 0.3
        mask[: shape[0] // 2] = False  # a long run, then noise: both kinds of block
        rle = brush.mask2rle(mask.astype(np.uint8) * 255)
        assert np.array_equal(decode_brush(rle, mask.size).reshape(shape), mask)
    with pytest.raises(ValueError, match="holds 35 pixels, the image has 36"):
        decode_brush(brush.mask2rle(np.zeros((7, 5), np.uint8)), 36)


def test_split_keeps_untouched_faces_and_follows_the_drawing():
    """Two overlapping faces: a part painted on the background goes to the nearer box, an erase clears
    the hidden label under it too, and the new maps' union is the drawing."""
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[4:6, 6:10] = 5  # face 0's nose reaches into face 1's region
    b[4:6, 0:4] = 3  # face 1's eye under it (hidden in the union)
    faces = [FaceRegion(0, a, 0, 0, np.array([0, 0, 10, 10.0])), FaceRegion(1, b, 6, 0, np.array([6, 0, 16, 10.0]))]
    before, _ = union(faces, 16, 10)
    drawn = before.copy()
    drawn[4:6, 6:8] = 0  # erased where both faces have a label
    drawn[8, 12:14] = 8  # a new lower lip on background, nearer face 1's box centre
    drawn[0, 0] = 1  # a brow on face 0's side
    split = split_photo(faces, drawn)
    assert split.left_out == 0 and split.changed == [4 + 1, 4 + 2]
    assert (split.maps[0][4:6, 6:8] == 0).all() and (split.maps[1][4:6, 0:2] == 0).all()
    assert split.maps[1][8, 6:8].tolist() == [8, 8] and split.maps[0][0, 0] == 1
    assert np.array_equal(union([FaceRegion(f.index, m, f.x, f.y, f.box) for f, m in zip(faces, split.maps)], 16, 10)[0], drawn)
    assert split_photo(faces, before).changed == [0, 0]


# -- Label Studio ------------------------------------------------------------------------------


def _labelstudio_export(demo_output: Path, tmp_path: Path) -> tuple[list[dict], Path]:
    out = tmp_path / "ls"
    export_output(str(demo_output), out, "labelstudio")
    tasks = json.loads((out / "tasks.json").read_text())
    exported = []
    for i, task in enumerate(tasks):
        annotation = {"id": 100 + i, "completed_by": {"id": 7, "email": REVIEWER}, "result": json.loads(json.dumps(task["predictions"][0]["result"])),
                      "was_cancelled": False, "created_at": "2026-11-30T09:00:00.000000Z", "updated_at": REVIEWED_AT}  # fmt: skip
        exported.append({"id": i + 1, "data": task["data"], "annotations": [annotation], "predictions": [i + 1]})
    return exported, out


def _write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_labelstudio_round_trip(demo_output, original, tmp_path):
    """Label Studio's JSON export after a reviewer grew one face's upper lip, deleted its brow, painted a
    new eye region and moved its box: exactly that face's row changes, by exactly those pixels."""
    from label_studio_converter import brush

    exported, _ = _labelstudio_export(demo_output, tmp_path)
    rows, regions, before, owner = _photo(original, GROUP)
    width, height = rows[0]["width"], rows[0]["height"]
    face = 1
    target = next(t for t in exported if t["data"]["key"] == GROUP)
    results = target["annotations"][0]["result"]
    by_id = {r["id"]: r for r in results}
    mine = _inside(regions[face], width, height)
    hidden = np.zeros((height, width), bool)  # pixels where another face has a label under this one's
    for k, r in enumerate(regions):
        if k != face:
            hidden |= np.pad(r.label_map != 0, ((r.y, height - r.y - r.label_map.shape[0]), (r.x, width - r.x - r.label_map.shape[1])))
    drawn = before.copy()
    # 1. The upper lip grown by 2 px onto skin and background (the region keeps our id face1-upper_lip;
    #    the skin region under it comes earlier in the result, so the lip wins there).
    lip = by_id[f"face{face}-upper_lip"]
    lip_mask = decode_brush(lip["value"]["rle"], width * height).reshape(height, width)
    grown = _dilate(lip_mask, 2) & np.isin(before, (0, SKIN)) & mine
    lip["value"]["rle"] = brush.mask2rle(((lip_mask | grown) * 255).astype(np.uint8))
    drawn[grown] = CLASS_NAMES.index("upper_lip")
    # 2. Its brow_1 deleted.
    brow = by_id.pop(f"face{face}-brow_1")
    results.remove(brow)
    erased = (owner == face) & (before == CLASS_NAMES.index("brow_1"))
    assert erased.any() and not (erased & hidden).any()
    drawn[erased] = 0
    # 3. A region drawn from scratch (Label Studio's own random id): a patch of cheek as eye_2.
    x0, y0, x1, y1 = regions[face].box
    cx, cy = int(x0 + 0.75 * (x1 - x0)), int(y0 + 0.55 * (y1 - y0))
    patch = np.zeros((height, width), bool)
    patch[cy : cy + 5, cx : cx + 5] = True
    patch &= np.isin(before, (0, SKIN))
    centres = np.array([r.centre() for r in regions])
    ys, xs = np.nonzero(patch)
    assert patch.sum() > 10 and all(np.argmin(((centres - [x, y]) ** 2).sum(1)) == face for x, y in zip(xs, ys))
    results.append({"id": "Xk3p_9aQ", "from_name": "parts", "to_name": "image", "type": "brushlabels", "original_width": width,
                    "original_height": height, "image_rotation": 0,
                    "value": {"format": "rle", "rle": brush.mask2rle((patch * 255).astype(np.uint8)), "brushlabels": ["eye_2"]}})  # fmt: skip
    drawn[patch] = CLASS_NAMES.index("eye_2")
    # 4. Its box moved 3 px right.
    box = by_id[f"face{face}"]["value"]
    box["x"] += 100 * 3 / width
    # A task nobody reviewed, and an older cancelled annotation on another, are left out / ignored.
    skipped = next(t for t in exported if t["data"]["key"] != GROUP)
    skipped["annotations"] = []
    other = next(t for t in exported if t["data"]["key"] not in (GROUP, skipped["data"]["key"]))
    other["annotations"].append(dict(other["annotations"][0], id=999, result=[], was_cancelled=True, updated_at="2026-12-01T00:00:00Z"))
    src = _write(tmp_path, "project-1-at-2026-11-30.json", exported)

    out, helen = tmp_path / "corrected", tmp_path / "helen"
    result = CliRunner().invoke(cli, ["import", str(src), str(out), "--from", "labelstudio", "--original", str(demo_output),
                                      "--helen", str(helen)])  # fmt: skip
    assert result.exit_code == 0, result.output
    print("\n" + result.output)
    imported = _rows(out)
    changed_key = (rows[face]["id"], face)
    # The face's own map: its original, with the reviewer's changes inside its region.
    region = regions[face]
    expected = region.label_map.copy()
    sl = (slice(region.y, region.y + expected.shape[0]), slice(region.x, region.x + expected.shape[1]))
    delta = (drawn != before)[sl]
    expected[delta] = drawn[sl][delta]
    got = decode_label_map(imported[changed_key]["label_map"])
    assert np.array_equal(got, expected)
    changed_pixels = int(grown.sum() + erased.sum() + patch.sum())
    print(f"labelstudio round trip: face {face} of {GROUP}: {int(grown.sum())} px grown, {int(erased.sum())} px erased, "
          f"{int(patch.sum())} px new region; the face's region {expected.shape[1]}x{expected.shape[0]} px")
    assert int((got != region.label_map).sum()) == changed_pixels == imported[changed_key]["changed_pixels"]
    classes = _classes(imported[changed_key])
    counts = np.bincount(got.ravel(), minlength=len(classes))
    assert [imported[changed_key][f"pixels_{c}"] for c in classes] == counts.tolist()
    assert imported[changed_key]["face_box"][0] == pytest.approx(max(0.0, rows[face]["face_box"][0]) + 3, abs=1e-3)
    # Nothing else moved: every other face of every reviewed image is its original row, the label map's bytes included.
    reviewed = {k for k, r in original.items() if r["key"] != skipped["data"]["key"]}
    assert set(imported) == reviewed
    _assert_only(imported, original, changed_key, {"label_map", "face_box", *(f"pixels_{c}" for c in _classes(original[changed_key]))})
    # The photo as the reviewer left it is the union of the imported rows.
    assert np.array_equal(_placed_union(sorted((r for r in imported.values() if r["key"] == GROUP), key=lambda r: r["face_index"])), drawn)
    when = datetime(2026, 11, 30, 10, 15, 30, 123000, tzinfo=timezone.utc)
    for key, row in imported.items():
        assert (row["label_source"], row["corrected_by"], row["corrected_at"], row["corrected_in"]) == ("human", REVIEWER, when, "labelstudio")
        assert row["changed_pixels"] == (changed_pixels if key == changed_key else 0)
    assert "1 face(s) corrected" in result.output and f"({changed_pixels:,} pixel(s) changed)" in result.output
    assert "1 face box(es) moved" in result.output and "1 task(s) without a submitted annotation" in result.output

    # Joins the original by (id, face_index), and reads as any output does.
    import pandas as pd

    import batch_parse

    joined = pd.read_parquet(out / "data").merge(pd.read_parquet(demo_output / "data"), on=["id", "face_index"],
                                                 suffixes=("", "_model"), validate="one_to_one")  # fmt: skip
    assert len(joined) == len(reviewed)
    assert (joined["label_map"] != joined["label_map_model"]).sum() == 1
    faces = batch_parse.open_output(str(out))
    assert faces.metadata["label_source"] == "human" and faces.metadata["corrected_in"] == "labelstudio"
    row = faces.to_table(filter=(pads.field("id") == changed_key[0]) & (pads.field("face_index") == face)).to_pylist()[0]
    assert np.array_equal(faces.label_map(row), expected)
    assert json.loads((out / ".batch-parse" / "import.json").read_text())["faces_changed"] == 1
    # An imported set is an output: `export --where` picks the faces a human changed.
    again = export_output(str(out), tmp_path / "again", "coco", where="changed_pixels > 0 and label_source == 'human'")
    assert (again.images, again.faces) == (1, 1)

    # --helen: the trainer's own reader and loader take the corrected faces, aligned as inference aligns them.
    from batch_parse.train.datasets import SPLITS, open_dataset
    from batch_parse.train.pool import open_pool, pack

    names = {}
    for split in SPLITS:
        ds = open_dataset(helen, split)
        for name, image, label in ds:
            names[name] = (image, label)
    faces_ok = {k: r for k, r in imported.items() if r["status"] == "ok"}
    assert sorted(names) == sorted(face_name(*k) for k in faces_ok)
    for key, row in faces_ok.items():
        image, label = names[face_name(*key)]
        assert image.shape == (row["aligned_height"], row["aligned_width"], 3)
        frame = frame_labels(decode_label_map(row["label_map"]), row["label_map_x"], row["label_map_y"],
                             np.asarray(row["transform"]).reshape(2, 3), row["aligned_width"], row["aligned_height"])  # fmt: skip
        assert np.array_equal(label, frame)
    changed_frame = names[face_name(*changed_key)][1]
    assert (changed_frame == CLASS_NAMES.index("brow_1")).sum() == 0 and (changed_frame == CLASS_NAMES.index("eye_2")).any()
    split = next(s for s in SPLITS if len(open_dataset(helen, s)))
    pooled = open_pool(pack([helen], tmp_path / "pool", canvas=64), split)
    assert pooled.images.shape[1:] == (3, 64, 64) and pooled.labels.shape[1:] == (64, 64) and int(pooled.labels.max()) > 0
    # And `batch-parse train` itself takes the folder as DATA: one optimiser step of the part networks.
    run = CliRunner().invoke(cli, ["train", str(helen), str(tmp_path / "run"), "--stage", "c", "--steps", "1", "--batch-size", "2",
                                   "--val-images", "2", "--threads", "1"])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert (tmp_path / "run" / "stage_c.safetensors").is_file()


def test_labelstudio_bad_input_is_one_line_and_writes_nothing(demo_output, original, tmp_path):
    exported, ls = _labelstudio_export(demo_output, tmp_path)
    group = next(i for i, t in enumerate(exported) if t["data"]["key"] == GROUP)

    def edited(change) -> list[dict]:
        copy = json.loads(json.dumps(exported))
        change(copy)
        return copy

    def no_id(tasks):
        del tasks[0]["data"]["batch_parse_id"]

    def foreign_id(tasks):
        tasks[-1]["data"]["batch_parse_id"] = "12345"

    def other_size(tasks):
        for r in tasks[-1]["annotations"][0]["result"]:
            r["original_width"] += 10

    def short_rle(tasks):
        result = next(r for r in tasks[group]["annotations"][0]["result"] if r["type"] == "brushlabels")
        del result["original_width"], result["original_height"]
        result["value"]["rle"] = __import__("label_studio_converter.brush").brush.mask2rle(np.zeros((5, 5), np.uint8))

    def unknown_label(tasks):
        next(r for r in tasks[group]["annotations"][0]["result"] if r["type"] == "brushlabels")["value"]["brushlabels"] = ["hair"]

    cases = [
        ("{not json", "is not JSON"),
        ({"images": [], "annotations": []}, "not a Label Studio JSON export: expected a list of tasks"),
        ([{"image": "a.jpg"}], "is not a Label Studio task"),
        (edited(no_id), "has no data.batch_parse_id"),
        (edited(foreign_id), "names image 12345, which"),
        (edited(other_size), "drawn on a"),
        (edited(short_rle), "brush mask holds 25 pixels, the image has"),
        (edited(unknown_label), "paints 'hair', a class stn-icnn/default@"),
        (json.loads((ls / "tasks.json").read_text()), "no task has a submitted annotation"),
    ]
    cvat = tmp_path / "cvat"
    export_output(str(demo_output), cvat, "cvat", limit=1)
    cases.append(((cvat / "segmentation-mask-1.1.zip").read_bytes(), "not a Label Studio JSON export: not UTF-8 text"))
    for n, (content, message) in enumerate(cases):
        src = _write(tmp_path, f"bad-{n}.json", content)
        out = tmp_path / f"out-{n}"
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
            import_corrections(src, out, "labelstudio", str(demo_output), helen=tmp_path / f"helen-{n}")
        assert "\n" not in str(caught.value)
        assert not out.exists() and not (tmp_path / f"helen-{n}").exists()
    assert not [p for p in tmp_path.iterdir() if ".importing-" in p.name]
    # The command: one `Error:` line, exit 1, for a bad file and for an output folder in use.
    src = _write(tmp_path, "bad.json", "[1, 2")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    for args, message in (([str(src), str(tmp_path / "o")], "is not JSON"), ([str(_write(tmp_path, "ok.json", exported)), str(busy)], "not an empty folder")):
        result = CliRunner().invoke(cli, ["import", *args, "--from", "labelstudio", "--original", str(demo_output)])
        assert result.exit_code == 1 and result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ") and message in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_class_the_model_lacks_is_refused_before_reading_or_skipped(demo_output_9_classes, tmp_path):
    """An annotator's `skin` stroke on a 9-class model's labels (stn-icnn/v2): one line naming the
    task before anything is read or written; with --skip-unknown-labels the stroke is left out,
    noted, and the photo's rows come back exactly as the model labelled them."""
    from label_studio_converter import brush

    demo_output, original = demo_output_9_classes, _rows(demo_output_9_classes)
    exported, _ = _labelstudio_export(demo_output, tmp_path)
    target = next(t for t in exported if t["data"]["key"] == GROUP)
    rows, _, before, _ = _photo(original, GROUP)
    width, height = rows[0]["width"], rows[0]["height"]
    cheek = np.zeros((height, width), np.uint8)
    cheek[(before == 0)] = 255  # everything the model called background, e.g. the skin it has no class for
    target["annotations"][0]["result"].append({
        "id": "skin1", "from_name": "parts", "to_name": "image", "type": "brushlabels", "original_width": width,
        "original_height": height, "value": {"format": "rle", "rle": brush.mask2rle(cheek), "brushlabels": ["skin"]}})  # fmt: skip
    src = _write(tmp_path, "skin.json", exported)
    out = tmp_path / "refused"
    with pytest.raises(ValueError, match=r"task \d+ \(key 'group_canvas.jpg'\) paints 'skin', a class stn-icnn/v2@\w+ does "
                                         r"not label .*--skip-unknown-labels") as caught:
        import_corrections(src, out, "labelstudio", str(demo_output))
    assert "\n" not in str(caught.value) and not out.exists()
    result = CliRunner().invoke(cli, ["import", str(src), str(out), "--from", "labelstudio", "--original", str(demo_output)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "paints 'skin'" in result.stderr and not out.exists()

    result = import_corrections(src, out, "labelstudio", str(demo_output), skip_unknown_labels=True)
    assert any("left out 1 region(s) labelled 'skin' in 1 task(s)" in n for n in result.notes)
    imported = _rows(out)
    group = [r for r in imported.values() if r["key"] == GROUP]
    assert group and all(r["changed_pixels"] == 0 for r in group)
    _equal_maps = [np.array_equal(decode_label_map(r["label_map"]), decode_label_map(original[(r["id"], r["face_index"])]["label_map"]))
                   for r in group]  # fmt: skip
    assert all(_equal_maps)
    # CVAT: a labelmap.txt whose `nose` an annotator renamed `skin`, refused the same way.
    cvat = tmp_path / "cvat"
    export_output(str(demo_output), cvat, "cvat")
    archive = cvat / "segmentation-mask-1.1.zip"
    with zipfile.ZipFile(archive) as source:
        labelmap = source.read("labelmap.txt").decode()
    assert "skin:" not in labelmap
    src = _cvat_zip(archive, {"labelmap.txt": labelmap.replace("nose:", "skin:").encode()}, "skin")
    with pytest.raises(ValueError, match="paints 'skin', a class stn-icnn/v2@") as caught:
        import_corrections(src, tmp_path / "refused-cvat", "cvat", str(demo_output))
    assert "\n" not in str(caught.value) and not (tmp_path / "refused-cvat").exists()


# -- CVAT --------------------------------------------------------------------------------------


def _cvat_zip(path: Path, replace: dict[str, bytes], name: str = "corrected") -> Path:
    out = path.with_name(f"{path.stem}-{name}.zip")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as target:
        for member in source.namelist():
            target.writestr(member, replace.get(member, source.read(member)))
        for member in replace.keys() - set(source.namelist()):
            target.writestr(member, replace[member])
    return out


def _rgb_png(classes: np.ndarray) -> bytes:
    """The class map as an RGB PNG in our colours (CVAT's masks are colours, read through labelmap.txt)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(CLASS_COLORS, np.uint8)[classes]).save(buffer, "PNG")
    return buffer.getvalue()


def test_cvat_round_trip(demo_output, original, tmp_path):
    """CVAT's archive after a reviewer turned one face's eye_1 into eye_2 and widened its lower lip:
    exactly that face's row changes, by exactly those pixels."""
    cvat = tmp_path / "cvat"
    export_output(str(demo_output), cvat, "cvat")
    rows, regions, before, owner = _photo(original, GROUP)
    width, height = rows[0]["width"], rows[0]["height"]
    face = 2
    item = f"SegmentationClass/{Path(GROUP).stem}.png"
    with zipfile.ZipFile(cvat / "segmentation-mask-1.1.zip") as archive:
        exported = np.asarray(Image.open(io.BytesIO(archive.read(item))))
    assert np.array_equal(exported, before)
    drawn = before.copy()
    relabelled = (owner == face) & (before == CLASS_NAMES.index("eye_1"))
    drawn[relabelled] = CLASS_NAMES.index("eye_2")
    lip = (owner == face) & (before == CLASS_NAMES.index("lower_lip"))
    centres = np.array([r.centre() for r in regions])
    widened = _dilate(lip, 1) & np.isin(before, (0, SKIN)) & _inside(regions[face], width, height)
    ys, xs = np.nonzero(widened)
    nearest = np.array([np.argmin(((centres - [x, y]) ** 2).sum(1)) for x, y in zip(xs, ys)])
    assert relabelled.any() and widened.any() and (nearest == face).all()
    drawn[widened] = CLASS_NAMES.index("lower_lip")
    src = _cvat_zip(cvat / "segmentation-mask-1.1.zip", {item: _rgb_png(drawn)})

    out = tmp_path / "corrected"
    result = import_corrections(src, out, "cvat", str(demo_output))
    print("\n" + "\n".join(result.lines()))
    imported = _rows(out)
    changed_key = (rows[face]["id"], face)
    region = regions[face]
    expected = region.label_map.copy()
    sl = (slice(region.y, region.y + expected.shape[0]), slice(region.x, region.x + expected.shape[1]))
    delta = (drawn != before)[sl]
    expected[delta] = drawn[sl][delta]
    got = decode_label_map(imported[changed_key]["label_map"])
    assert np.array_equal(got, expected)
    changed_pixels = int(relabelled.sum() + widened.sum())
    print(f"cvat round trip: face {face} of {GROUP}: {int(relabelled.sum())} px eye_1 -> eye_2, {int(widened.sum())} px lower lip "
          f"widened; the face's region {expected.shape[1]}x{expected.shape[0]} px")
    assert (result.faces_changed, result.pixels_changed, imported[changed_key]["changed_pixels"]) == (1, changed_pixels, changed_pixels)
    assert set(imported) == set(original)  # CVAT's archive holds every image of the task
    _assert_only(imported, original, changed_key, {"label_map", *(f"pixels_{c}" for c in _classes(original[changed_key]))})
    classes = _classes(imported[changed_key])
    assert [imported[changed_key][f"pixels_{c}"] for c in classes] == np.bincount(got.ravel(), minlength=len(classes)).tolist()
    assert np.array_equal(_placed_union(sorted((r for r in imported.values() if r["key"] == GROUP), key=lambda r: r["face_index"])), drawn)
    for key, row in imported.items():
        assert (row["label_source"], row["corrected_by"], row["corrected_at"], row["corrected_in"]) == ("human", None, None, "cvat")
        assert row["changed_pixels"] == (changed_pixels if key == changed_key else 0)
    # A second review round starts from the corrected set: exported and imported as it is, nothing changes.
    export_output(str(out), tmp_path / "round2", "cvat")
    second = import_corrections(tmp_path / "round2" / "segmentation-mask-1.1.zip", tmp_path / "corrected2", "cvat", str(out))
    assert (second.faces, second.faces_changed) == (len(imported), 0)
    again = _rows(tmp_path / "corrected2")
    assert again.keys() == imported.keys()
    assert all(again[k] == dict(imported[k], changed_pixels=0) for k in imported)


def test_cvat_bad_input_is_one_line_and_writes_nothing(demo_output, tmp_path):
    cvat = tmp_path / "cvat"
    export_output(str(demo_output), cvat, "cvat")
    archive = cvat / "segmentation-mask-1.1.zip"
    item = f"SegmentationClass/{Path(GROUP).stem}.png"
    with zipfile.ZipFile(archive) as z:
        group = np.asarray(Image.open(io.BytesIO(z.read(item))))
    odd = np.asarray(CLASS_COLORS, np.uint8)[group].copy()
    odd[0, 0] = (1, 2, 3)
    buffer = io.BytesIO()
    Image.fromarray(odd).save(buffer, "PNG")
    no_labelmap = tmp_path / "no-labelmap.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(no_labelmap, "w") as target:
        for name in source.namelist():
            if name != "labelmap.txt":
                target.writestr(name, source.read(name))
    cases = [
        (_write(tmp_path, "not.zip", "PK but not a zip"), "is not a zip archive"),
        (_write(tmp_path, "export.json", [{"data": {}, "annotations": []}]), "is not a zip archive"),
        (no_labelmap, "has no labelmap.txt"),
        (_cvat_zip(archive, {item: _rgb_png(group[:-1])}, "size"), f"the mask is {group.shape[1]}x{group.shape[0] - 1}, the image"),
        (_cvat_zip(archive, {item: buffer.getvalue()}, "colour"), r"colour \(1, 2, 3\) is no label of labelmap.txt"),
        (_cvat_zip(archive, {"SegmentationClass/somebody_else.png": _rgb_png(group)}, "stranger"), "somebody_else.png matches no image"),
    ]
    for n, (src, message) in enumerate(cases):
        out = tmp_path / f"out-{n}"
        with pytest.raises(ValueError, match=message) as caught:
            import_corrections(src, out, "cvat", str(demo_output))
        assert "\n" not in str(caught.value) and not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".importing-" in p.name]


def test_no_face_photo_and_parts_outside_every_face(tmp_path):
    """A photo the detector found no face in: its row comes back confirmed by the human; what the
    reviewer drew on it has no face row to go to and is counted, not imported. An error row has no labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from label_studio_converter import brush

    from batch_parse.output.schema import (
        BASE_SCHEMA,
        STATUS_ERROR,
        STATUS_NO_FACE,
        file_metadata,
    )

    def row(key: str, image_id: int, status: str) -> dict:
        values = {name: None for name in BASE_SCHEMA.names}
        values.update(id=image_id, key=key, size=99, width=64 if status != STATUS_ERROR else None, height=48 if status != STATUS_ERROR else None,
                      status=status, face_count=0, model_version="stn-icnn/default@00000000",
                      processed_at=datetime(2026, 1, 1, tzinfo=timezone.utc), error_code="truncated" if status == STATUS_ERROR else None)  # fmt: skip
        return values

    dst = tmp_path / "labels"
    (dst / "data").mkdir(parents=True)
    schema = BASE_SCHEMA.with_metadata(file_metadata("stn-icnn/default", "0" * 64, "jpeg", source=str(tmp_path)))
    pq.write_table(pa.Table.from_pylist([row("empty.jpg", 11, STATUS_NO_FACE), row("broken.jpg", 12, STATUS_ERROR)], schema=schema),
                   dst / "data" / "part-0.parquet")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 30:40] = 255
    drawn = [{"id": "n1", "from_name": "parts", "to_name": "image", "type": "brushlabels", "original_width": 64, "original_height": 48,
              "value": {"format": "rle", "rle": brush.mask2rle(mask), "brushlabels": ["nose"]}},
             {"id": "b1", "from_name": "face", "to_name": "image", "type": "rectanglelabels", "original_width": 64, "original_height": 48,
              "value": {"x": 40, "y": 10, "width": 30, "height": 50, "rotation": 0, "rectanglelabels": ["face"]}}]  # fmt: skip
    task = {"id": 1, "data": {"batch_parse_id": "11", "key": "empty.jpg"},
            "annotations": [{"id": 5, "completed_by": 3, "result": drawn, "updated_at": REVIEWED_AT}]}  # fmt: skip
    result = import_corrections(_write(tmp_path, "export.json", [task]), tmp_path / "out", "labelstudio", str(dst))
    (back,) = _rows(tmp_path / "out").values()
    assert (back["status"], back["label_source"], back["corrected_by"], back["changed_pixels"]) == (STATUS_NO_FACE, "human", "3", 0)
    assert (result.images, result.faces, result.left_out_pixels, result.unmatched_boxes) == (1, 0, 100, 1)
    assert any("100 painted pixel(s) lie outside every face's region" in n for n in result.notes)
    broken = dict(task, data={"batch_parse_id": "12", "key": "broken.jpg"})
    with pytest.raises(ValueError, match="is an error row in the original output"):
        import_corrections(_write(tmp_path, "broken.json", [broken]), tmp_path / "out2", "labelstudio", str(dst))
    assert not (tmp_path / "out2").exists()


def _classes(row: dict) -> list[str]:
    """The classes of the model that labelled `row` (a 9-class model's rows have no pixels_skin)."""
    return [c for c in CLASS_NAMES if f"pixels_{c}" in row]
