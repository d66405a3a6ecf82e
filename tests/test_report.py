"""inspect and render on an output folder built the way the job writes one, from real UTKFace JPEGs."""

from __future__ import annotations

import io
import re
import zlib
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from batch_parse.labels import BACKGROUND, CLASS_COLORS, CLASS_NAMES, NUM_CLASSES, PART_NAMES, PARTS
from batch_parse.output.schema import BASE_SCHEMA, STATUS_ERROR, STATUS_NO_FACE, STATUS_OK, file_metadata, output_schema, read_metadata
from batch_parse.storage.location import parse_location
from batch_parse.report import overlay as ov
from batch_parse.output.quality import parse_score
from batch_parse.report.inspect import inspect_output
from batch_parse.report.render import render_output

MODEL = "stn-icnn/test"
WEIGHTS = "0123abcd" + "0" * 56
VERSION = f"{MODEL}@0123abcd"
VERSION_DIR = "stn-icnn_test-0123abcd"
# Mean confidences 0.9, 0.5, 0.7: render must show face1, face2, face0 in that order.
CONFIDENCES = (
    (0.95, 0.85, 0.92, 0.88, 0.90, 0.90),
    (0.40, 0.60, 0.45, 0.55, 0.50, 0.50),
    (0.72, 0.68, 0.70, 0.70, 0.75, 0.65),
)
ERROR_KEY = "faces/broken.jpg"
ERROR_CODE = "not_an_image"
NO_FACE_KEY = "faces/landscape.jpg"


def label_map_for(i: int, size: int = 200) -> np.ndarray:
    """Non-overlapping rectangles, one per class, each a size known from (i, class); some classes absent."""
    lm = np.zeros((size, size), dtype=np.uint8)
    for c in range(1, NUM_CLASSES):
        if (c + i) % 4 == 0:
            continue
        y0, x0 = 10 + 20 * (c - 1), 20 + 10 * i
        lm[y0 : y0 + 4 + 2 * i + c, x0 : x0 + 30 + 5 * c] = c
    return lm


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _id(key: str) -> int:
    return zlib.crc32(key.encode())


def _ok_row(key: str, jpeg: bytes, lm: np.ndarray, confidences) -> dict:
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    row = {
        "id": _id(key), "key": key, "etag": "x", "size": len(jpeg), "width": image.width, "height": image.height,
        "status": STATUS_OK, "error_code": None, "error": None, "label_map": _png(lm),
        "face_index": 0, "face_count": 1, "face_box": [0.0, 0.0, float(image.width), float(image.height)],
        "transform": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "aligned_width": image.width, "aligned_height": image.height,
        "label_map_x": 0, "label_map_y": 0,
        "model_version": VERSION, "processed_at": datetime.now(timezone.utc),
    }  # fmt: skip
    for part, confidence in zip(PARTS, confidences):
        ys, xs = np.nonzero(np.isin(lm, part.classes))
        box = [10.0, 10.0, 40.0, 40.0] if xs.size == 0 else [xs.min() - 5.0, ys.min() - 5.0, xs.max() + 6.0, ys.max() + 6.0]
        row[f"{part.name}_box"] = box
        row[f"{part.name}_window"] = [box[0], box[1], box[2], box[1], box[2], box[3], box[0], box[3]]
        row[f"{part.name}_crop"] = _jpeg(image.crop(tuple(int(v) for v in box)))
        row[f"{part.name}_confidence"] = confidence
    row["parse_score"] = parse_score(confidences)  # stored, as the job stores it
    for c, name in enumerate(CLASS_NAMES):
        row[f"pixels_{name}"] = int((lm == c).sum())
    return row


def _error_row(key: str) -> dict:
    row = {name: None for name in BASE_SCHEMA.names}
    row.update(id=_id(key), key=key, size=12, status=STATUS_ERROR, error_code=ERROR_CODE, face_count=0,
               error="not an image file Pillow can read (12 bytes)", model_version=VERSION,
               processed_at=datetime.now(timezone.utc))  # fmt: skip
    return row


def _no_face_row(key: str) -> dict:
    row = {name: None for name in BASE_SCHEMA.names}
    row.update(id=_id(key), key=key, size=99, width=64, height=48, status=STATUS_NO_FACE, face_count=0,
               model_version=VERSION, processed_at=datetime.now(timezone.utc))  # fmt: skip
    return row


def _write(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


@pytest.fixture
def job_output(tmp_path, face_jpegs):
    """(dst, source folder, rows): 3 labelled real faces + 1 error row, laid out as the job writes them."""
    source = tmp_path / "source"
    jpegs = face_jpegs(3)
    rows = []
    for i, jpeg in enumerate(jpegs):
        key = f"faces/face{i}.jpg"
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        (source / key).write_bytes(jpeg)
        rows.append(_ok_row(key, jpeg, label_map_for(i), CONFIDENCES[i]))
    rows.append(_error_row(ERROR_KEY))
    rows.append(_no_face_row(NO_FACE_KEY))
    dst = tmp_path / "out"
    schema = BASE_SCHEMA.with_metadata(file_metadata(MODEL, WEIGHTS, "jpeg", source=str(source)))
    _write(dst / VERSION_DIR / "data" / "part-0.parquet", rows, schema)
    # Ray's checkpoint files and hidden files live beside the data and must not be counted.
    _write(dst / "_checkpoint" / "ids.parquet", rows, schema)
    _write(dst / VERSION_DIR / "data" / ".part-9.parquet.tmp.parquet", rows, schema)
    return dst, source, rows


def _area_table(lines: list[str]) -> dict[str, tuple[float, float | None, float | None]]:
    table = {}
    for line in lines:
        m = re.match(r"^\s{4}(\S+)\s+([\d.]+)%\s+(?:([\d.]+)%|-)\s+(?:([\d.]+)%|-)$", line)
        if m and m.group(1) in CLASS_NAMES:
            mean = float(m.group(3)) if m.group(3) else None
            median = float(m.group(4)) if m.group(4) else None
            table[m.group(1)] = (float(m.group(2)), mean, median)
    return table


def test_file_metadata_records_source_and_keeps_old_signature():
    meta = read_metadata(output_schema(MODEL, WEIGHTS, "png"))
    assert meta["source"] is None and meta["endpoint_url"] is None and meta["crop_format"] == "png"
    meta = read_metadata(BASE_SCHEMA.with_metadata(file_metadata(MODEL, WEIGHTS, "jpeg", source=parse_location("s3://b-1/x", "http://h:1", anonymous=True))))
    assert (meta["source"], meta["endpoint_url"], meta["source_anonymous"]) == ("s3://b-1/x", "http://h:1", True)


def test_inspect_counts_areas_and_confidences(job_output):
    dst, _, rows = job_output
    lines = inspect_output(str(dst))
    text = "\n".join(lines)
    assert f"model_version {VERSION}" in text
    assert re.search(r"files 1\s+images 5\s+rows 5: faces 3\s+no_face 1\s+error 1\b", text), text
    assert "duplicate rows: 0 " in text
    assert re.search(rf"{ERROR_CODE}\s+1\s+e\.g\. {re.escape(ERROR_KEY)}", text), text
    assert "most common: 200x200 (3)" in text
    assert "skipped" not in text  # nothing foreign: the _checkpoint and hidden copies were not even listed

    ok = [r for r in rows if r["status"] == STATUS_OK]
    areas = _area_table(lines)
    assert set(areas) == set(CLASS_NAMES)
    for c, name in enumerate(CLASS_NAMES):
        shares = np.array([r[f"pixels_{name}"] / (r["width"] * r["height"]) for r in ok])
        present = shares[shares > 0]
        got_present, got_mean, got_median = areas[name]
        assert got_present == pytest.approx(100 * present.size / len(ok), abs=0.05), name
        if present.size == 0:
            assert got_mean is None and got_median is None
            continue
        assert got_mean == pytest.approx(100 * present.mean(), abs=0.0006), name
        # Nearest-rank median off a log histogram: within 1% of the value (and 3-decimal print).
        median = 100 * np.percentile(present, 50, method="inverted_cdf")
        assert got_median == pytest.approx(median, rel=0.01, abs=0.0006), name
    # The rectangles make some classes absent in some images: the test would not see a wrong share otherwise.
    assert any(0 < v[0] < 100 for v in areas.values())

    for p, name in enumerate(PART_NAMES):
        values = np.array([c[p] for c in CONFIDENCES], dtype=np.float32).astype(np.float64)
        m = re.search(rf"^\s{{4}}{name}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+0\|(.{{10}})\|1$", text, re.M)
        assert m, name
        assert float(m.group(1)) == pytest.approx(values.mean(), abs=0.0006)
        for q, got in zip((10, 50, 90), m.group(2, 3, 4)):
            assert float(got) == pytest.approx(np.percentile(values, q, method="inverted_cdf"), abs=0.0051), (name, q)
        assert sum(ch != " " for ch in m.group(5)) == len(set((values * 10).astype(int).clip(0, 9)))


def test_inspect_reports_duplicate_ids(job_output):
    dst, source, rows = job_output
    again = dict(rows[0], key="faces/copy-of-face0.jpg")  # same id, as a buggy resume would write
    schema = BASE_SCHEMA.with_metadata(file_metadata(MODEL, WEIGHTS, "jpeg", source=str(source)))
    _write(dst / VERSION_DIR / "data" / "part-1.parquet", [again], schema)
    text = "\n".join(inspect_output(str(dst)))
    assert re.search(r"files 2\s+images 5\s+rows 6: faces 4\s+no_face 1\s+error 1\b", text), text
    assert f"duplicate rows: 1 (id, face_index) pair(s) occur more than once (must be 0), e.g. ids {rows[0]['id']}" in text
    # A second face of the same image is not a duplicate.
    second = dict(rows[0], face_index=1, face_count=2)
    _write(dst / VERSION_DIR / "data" / "part-2.parquet", [second], schema)
    text = "\n".join(inspect_output(str(dst)))
    assert "duplicate rows: 1 (id, face_index)" in text


def test_inspect_user_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="output location not found"):
        inspect_output(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no Parquet files"):
        inspect_output(str(tmp_path / "empty"))
    pq.write_table(pa.table({"x": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(ValueError, match="none written by batch-parse"):
        inspect_output(str(tmp_path))


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def _panel_sources(index: Path) -> list[str]:
    parser = _Images()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser.sources


def test_render_writes_panels_and_contact_sheet(job_output, tmp_path):
    dst, source, rows = job_output
    (source / "faces" / "face2.jpg").unlink()  # deleted since labelling: panel from the label map alone
    index = render_output(str(dst), tmp_path / "review", limit=10)
    sources = _panel_sources(index)
    assert len(sources) == 3
    for src in sources:
        assert not src.startswith(("/", "http")) and (index.parent / src).is_file()
    assert len(list((index.parent / "panels").rglob("*.png"))) == 3

    page = index.read_text(encoding="utf-8")
    assert "ordered by ascending parse score" in page
    order = [page.index(f"<strong>faces/face{i}.jpg</strong>") for i in (1, 2, 0)]
    assert order == sorted(order), "rows must come by ascending mean confidence"
    assert ERROR_KEY in page and ERROR_CODE in page
    assert "Images without a face" in page and NO_FACE_KEY in page
    assert page.count("drawn from the label map alone") == 1
    assert page.index("drawn from the label map alone") > page.index("faces/face2.jpg")
    for name, color in zip(CLASS_NAMES, CLASS_COLORS):
        assert f"rgb{tuple(color)}" in page and name in page

    # The first tile shows the real photo where the source was readable, flat grey where it was not.
    by_key = {r["key"]: r for r in rows}
    for key, readable in (("faces/face0.jpg", True), ("faces/face2.jpg", False)):
        src = next(s for s in sources if s.endswith(f"{by_key[key]['id']:016x}-0.png"))
        picture = np.asarray(Image.open(index.parent / src).convert("RGB")).astype(int)
        header = (ov.FONT_SIZE + 8) * (1 if readable else 2) + 4
        corner = picture[header + 2 : header + 12, ov.GAP + 2 : ov.GAP + 12]  # background of the label map
        if readable:
            assert corner.std() > 2 or np.abs(corner - ov.NO_IMAGE_GREY).max() > 10
        else:
            assert (corner == ov.NO_IMAGE_GREY).all()


def test_render_limit_keeps_least_confident(job_output, tmp_path):
    dst, _, rows = job_output
    index = render_output(str(dst), tmp_path / "review", limit=2)
    ids = {r["key"]: r["id"] for r in rows}
    expected = [f"{ids[f'faces/face{i}.jpg']:016x}-0.png" for i in (1, 2)]
    assert [Path(s).name for s in _panel_sources(index)] == expected


def test_inspect_and_render_on_s3(s3_server, tmp_path, face_jpegs):
    bucket = s3_server.make_bucket("report-test")
    client = s3_server.client()
    rows = []
    for i, jpeg in enumerate(face_jpegs(2)):
        key = f"src/face{i}.jpg"  # S3 rows carry full object keys
        client.put_object(Bucket=bucket, Key=key, Body=jpeg)
        rows.append(_ok_row(key, jpeg, label_map_for(i), CONFIDENCES[i]))
    schema = BASE_SCHEMA.with_metadata(
        file_metadata(MODEL, WEIGHTS, "jpeg", source=parse_location(f"s3://{bucket}/src", s3_server.endpoint_url))
    )
    local = tmp_path / "part-0.parquet"
    _write(local, rows, schema)
    client.put_object(Bucket=bucket, Key=f"out/{VERSION_DIR}/data/part-0.parquet", Body=local.read_bytes())

    text = "\n".join(inspect_output(parse_location(f"s3://{bucket}/out", s3_server.endpoint_url)))
    assert re.search(r"files 1\s+images 2\s+rows 2: faces 2\s+no_face 0\s+error 0\b", text), text

    index = render_output(parse_location(f"s3://{bucket}/out", s3_server.endpoint_url), tmp_path / "review", limit=5)
    assert len(_panel_sources(index)) == 2
    assert "drawn from the label map alone" not in index.read_text(encoding="utf-8")


def test_overlay_colours_outlines_and_leaves_background():
    lm = np.zeros((20, 20), dtype=np.uint8)
    lm[5:15, 5:15] = PARTS[0].classes[0]
    image = np.full((20, 20, 3), 100, dtype=np.uint8)
    color = np.array(CLASS_COLORS[PARTS[0].classes[0]])
    assert (ov.colorize(lm)[10, 10] == color).all() and (ov.colorize(lm)[0, 0] == CLASS_COLORS[BACKGROUND]).all()
    out = ov.overlay(image, lm, alpha=0.5).astype(int)
    assert (out[0, 0] == 100).all()  # background untouched
    assert (out[5, 10] == color).all()  # region edge: full class colour
    assert np.abs(out[10, 10] - (100 + color) / 2).max() <= 0.5 + 1e-9  # interior: blended
    assert ov.legend().height >= NUM_CLASSES * ov.FONT_SIZE
    with pytest.raises(ValueError, match="label map"):
        ov.overlay(image[:10], lm)


GROUP_KEY = "faces/group.jpg"
SINGLE_KEY = "faces/single.jpg"
# (mean confidence order: group face 1 < single < group face 0)
GROUP_CONFIDENCES = ((0.8,) * 6, (0.3,) * 6)
SINGLE_CONFIDENCES = (0.6,) * 6
GROUP_CLASSES = (3, 7)  # each group face's label map holds one class, so the photo panel shows whose map is whose


@pytest.fixture
def group_output(tmp_path, face_jpegs):
    """A photo with two faces (its rows split over two files, as a block boundary may put them) and a one-face photo."""
    source = tmp_path / "source"
    (source / "faces").mkdir(parents=True)
    first, second, single = face_jpegs(3)
    canvas = Image.new("RGB", (440, 240), (90, 120, 160))
    origins = ((10, 20), (230, 20))
    for jpeg, origin in zip((first, second), origins):
        canvas.paste(Image.open(io.BytesIO(jpeg)).convert("RGB"), origin)
    group = _jpeg(canvas)
    (source / GROUP_KEY).write_bytes(group)
    (source / SINGLE_KEY).write_bytes(single)
    rows = []
    for index, ((x, y), cls, confidences) in enumerate(zip(origins, GROUP_CLASSES, GROUP_CONFIDENCES)):
        region = np.zeros((200, 200), np.uint8)
        region[60:140, 50:150] = cls
        row = _ok_row(GROUP_KEY, group, region, confidences)
        row.update(face_index=index, face_count=2, label_map_x=x, label_map_y=y, face_score=0.99 - index / 10,
                   face_box=[x + 30.0, y + 30.0, x + 170.0, y + 180.0],
                   landmarks=[x + 70.0, y + 80.0, x + 130.0, y + 80.0, x + 100.0, y + 110.0, x + 75.0, y + 140.0, x + 125.0, y + 140.0])  # fmt: skip
        rows.append(row)
    rows.append(_ok_row(SINGLE_KEY, single, label_map_for(0), SINGLE_CONFIDENCES))
    dst = tmp_path / "out"
    schema = BASE_SCHEMA.with_metadata(file_metadata(MODEL, WEIGHTS, "jpeg", source=str(source)))
    _write(dst / VERSION_DIR / "data" / "part-0.parquet", [rows[0], rows[2]], schema)
    _write(dst / VERSION_DIR / "data" / "part-1.parquet", [rows[1]], schema)
    return dst, rows


class _Figures(HTMLParser):
    """Each <figure>'s id, class, image and link targets, in page order."""

    def __init__(self):
        super().__init__()
        self.figures: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figures.append({"id": attrs.get("id"), "class": attrs.get("class"), "img": None, "links": [], "text": ""})
        elif self.figures and tag == "img":
            self.figures[-1]["img"] = attrs["src"]
        elif self.figures and tag == "a":
            self.figures[-1]["links"].append(attrs["href"])

    def handle_data(self, data):
        if self.figures:
            self.figures[-1]["text"] += data


def test_render_shows_a_group_photo_once_and_links_faces_to_rows(group_output, tmp_path):
    dst, rows = group_output
    index = render_output(str(dst), tmp_path / "review", limit=10)
    parser = _Figures()
    parser.feed(index.read_text(encoding="utf-8"))
    figures = parser.figures
    group_id = f"{rows[0]['id']:016x}"
    # Least confident first: group face 1, then the one-face photo, then group face 0; the group photo once,
    # just before its first face.
    assert [f["id"] for f in figures] == [f"image-{group_id}", f"face-{group_id}-1", f"face-{rows[2]['id']:016x}-0", f"face-{group_id}-0"]
    photo, *faces = figures
    assert photo["class"] == "photo" and photo["img"].endswith(f"{group_id}-photo.png")
    assert photo["links"] == [f"#face-{group_id}-1", f"#face-{group_id}-0"]  # its faces, least confident first
    assert f'--where "id == {rows[0]["id"]}"' in photo["text"]
    assert "faces found in the output" not in photo["text"]  # the face in the other file was found
    for figure, row in zip(faces, (rows[1], rows[2], rows[0])):
        assert f"#{figure['id']}" in figure["links"]  # the row key links to the face itself
        assert f"id {row['id']}, face_index {row['face_index']}" in figure["text"]
        assert f'--where "id == {row["id"]} and face_index == {row["face_index"]}"' in figure["text"]
        assert (f"#image-{group_id}" in figure["links"]) == (row["key"] == GROUP_KEY)
    # The photo panel draws both faces' label maps over the whole photo (outlines in full class colour).
    picture = np.asarray(Image.open(index.parent / photo["img"]).convert("RGB"))
    for cls in GROUP_CLASSES:
        assert (picture == CLASS_COLORS[cls]).all(axis=2).sum() > 20, CLASS_NAMES[cls]
    assert len(list((index.parent / "panels").rglob("*-photo.png"))) == 1


def test_photo_panel_numbers_every_face():
    lm = np.zeros((100, 200), np.uint8)
    lm[30:60, 20:60] = 5
    lm[30:60, 120:160] = 6
    faces = [(0, np.array([10.0, 20, 70, 80]), np.full((5, 2), 40.0)), (1, np.array([110.0, 20, 170, 80]), None)]
    picture = ov.photo_panel(np.full((100, 200, 3), 128, np.uint8), lm, faces, "title")
    assert picture.width > 2 * 200 and picture.height > 100
    with_note = ov.photo_panel(None, lm, faces, "title", note="source gone")
    assert with_note.height > picture.height


def test_render_where_and_min_face_narrow_the_faces(job_output, tmp_path):
    """`render --where` takes export's clause language; `--min-face` drops faces under PX on the box's shorter side."""
    dst, _, rows = job_output
    rows = [dict(r) for r in rows]
    small = next(r for r in rows if r["key"] == "faces/face1.jpg")
    small["face_box"] = [10.0, 10.0, 40.0, 50.0]  # 30 x 40 px: the one face under 35 px
    narrowed = tmp_path / "narrowed"
    _write(narrowed / VERSION_DIR / "data" / "part-0.parquet", rows,
           BASE_SCHEMA.with_metadata(file_metadata(MODEL, WEIGHTS, "jpeg", source=str(job_output[1]))))  # fmt: skip
    ids = {r["key"]: r["id"] for r in rows}

    def shown(**kw) -> tuple[list[str], str]:
        index = render_output(str(narrowed), tmp_path / f"review-{len(list(tmp_path.iterdir()))}", limit=10, **kw)
        names = [Path(s).name for s in _panel_sources(index)]
        return [k for k, i in ids.items() if f"{i:016x}-0.png" in names], index.read_text(encoding="utf-8")

    faces, page = shown(where="mouth_confidence >= 0.6")  # mouth 0.90, 0.50, 0.65: face1 goes
    assert faces == ["faces/face0.jpg", "faces/face2.jpg"]
    assert page.index("<strong>faces/face2.jpg</strong>") < page.index("<strong>faces/face0.jpg</strong>")  # lowest parse score first
    assert ERROR_KEY not in page and NO_FACE_KEY not in page  # their mouth_confidence is null: no match
    assert "--where mouth_confidence &gt;= 0.6" in page and "2 of 2 faces shown" in page
    faces, page = shown(min_face=35)
    assert faces == ["faces/face0.jpg", "faces/face2.jpg"] and "1 smaller face(s) left out" in page
    assert ERROR_KEY in page and NO_FACE_KEY in page  # --min-face is about faces only
    faces, _ = shown(where="status == 'ok'", min_face=25)
    assert faces == ["faces/face0.jpg", "faces/face1.jpg", "faces/face2.jpg"]
    with pytest.raises(ValueError, match="unknown or non-scalar column 'face_scor'"):
        render_output(str(narrowed), tmp_path / "never", where="face_scor > 1")
    assert not (tmp_path / "never").exists()


def test_render_cli_takes_where_and_min_face_and_says_what_limit_counts(job_output, tmp_path):
    from click.testing import CliRunner

    from batch_parse.cli.main import cli

    dst, _, _ = job_output
    runner = CliRunner()
    help_text = " ".join(runner.invoke(cli, ["render", "--help"]).output.split())
    assert "Faces to draw, least confident (lowest parse score) first" in help_text and "--where" in help_text
    result = runner.invoke(cli, ["render", str(dst), "--out", str(tmp_path / "r"), "--where", "face_index == 0",
                                 "--min-face", "10", "--limit", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(_panel_sources(tmp_path / "r" / "index.html")) == 2
    bad = runner.invoke(cli, ["render", str(dst), "--out", str(tmp_path / "bad"), "--where", "face_score >> 1"])
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: ") and "--where" in lines[0]


def test_render_puts_the_worst_reviewable_face_first_and_counts_the_tiny_ones(job_output, tmp_path):
    """By default faces under REVIEW_MIN_FACE px are counted, not drawn: the worst face (face1, parse
    score 0.5) is 30 px wide, so the page opens on the worst face a reviewer can correct (face2, 0.7)."""
    from click.testing import CliRunner

    from batch_parse.cli.main import cli
    from batch_parse.report import REVIEW_MIN_FACE

    dst, source, rows = job_output
    rows = [dict(r) for r in rows]
    next(r for r in rows if r["key"] == "faces/face1.jpg")["face_box"] = [10.0, 10.0, 40.0, 50.0]  # 30 x 40 px
    tiny = tmp_path / "tiny"
    _write(tiny / VERSION_DIR / "data" / "part-0.parquet", rows,
           BASE_SCHEMA.with_metadata(file_metadata(MODEL, WEIGHTS, "jpeg", source=str(source))))  # fmt: skip
    assert 30 < REVIEW_MIN_FACE <= 200  # the 200 px faces are shown, the 30 px one is not

    index = render_output(str(tiny), tmp_path / "default")
    names = [Path(s).name for s in _panel_sources(index)]
    page = index.read_text(encoding="utf-8")
    ids = {r["key"]: r["id"] for r in rows}
    assert [k for i in names for k, v in ids.items() if i == f"{v:016x}-0.png"] == ["faces/face2.jpg", "faces/face0.jpg"]
    assert f"--min-face {REVIEW_MIN_FACE:g}" in page and "1 smaller face(s) left out" in page
    everything = [Path(s).name for s in _panel_sources(render_output(str(tiny), tmp_path / "all", min_face=0))]
    assert everything[0] == f"{ids['faces/face1.jpg']:016x}-0.png"  # --min-face 0: the tiny worst face first again

    runner = CliRunner()
    help_text = " ".join(runner.invoke(cli, ["render", "--help"]).output.split())
    assert f"[default: {REVIEW_MIN_FACE}; x>=0]" in help_text and "0 shows every face" in help_text
    result = runner.invoke(cli, ["render", str(tiny), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert (f"drew 2 of 2 face(s), lowest parse score first; 1 face(s) under {REVIEW_MIN_FACE:g} px not shown "
            "(--min-face 0 shows them)") in result.output
