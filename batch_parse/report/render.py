"""`render`: review panels (PNG) of the least confident faces of an output, and an index.html contact sheet.

Two passes over the output: the small columns pick the `limit` face rows with the lowest parse score
(output/quality.py: the mean part confidence, a part not found counting 0), and the first error and
no-face rows; then label maps and crops are read for those rows only. `where` (export's --where
language, export/where.py) and `min_face` (the shorter side of the face box, px) narrow the rows
first: every row must match `where`, and face rows must be at least `min_face`.
The original image is not in the output, so it is fetched again from the source recorded in
each file's metadata; when that fails the panel is drawn from the label map alone and says why.
A photo with several faces is also drawn once whole, every face numbered by its face_index, just
before the first of its faces on the page; each face links to it and carries its row key
(id, face_index) with the `--where` that exports exactly that row.
"""

from __future__ import annotations

import heapq
import html
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from batch_parse.labels import CLASS_COLORS, CLASS_NAMES, PART_NAMES
from batch_parse.output.codec import decode_crop, decode_label_map
from batch_parse.output.quality import (
    CONFIDENCE_COLUMNS,
    PARSE_SCORE_DOC,
    face_size,
    parse_scores,
)
from batch_parse.output.reader import Output, OutputFile, open_output
from batch_parse.pipeline.decode import DecodeError, decode_image
from batch_parse.pipeline.options import DEFAULT_MAX_PIXELS
from batch_parse.output.schema import STATUS_ERROR, STATUS_NO_FACE, STATUS_OK, file_class_names
from batch_parse.report import REVIEW_MIN_FACE
from batch_parse.report.overlay import panel, photo_panel
from batch_parse.storage.fetch import FetchError
from batch_parse.storage.location import Location
from batch_parse.storage.originals import fetch_originals

SELECT_COLUMNS = ("id", "key", "status", "error_code", "error", "width", "height", "model_version",
                  "face_index", "face_count", "face_score", "face_box", *CONFIDENCE_COLUMNS)
PANEL_COLUMNS = ("id", "face_index", "label_map", "label_map_x", "label_map_y", "face_box", "landmarks",
                 *(f"{p}_crop" for p in PART_NAMES), *(f"{p}_box" for p in PART_NAMES))
PANELS_DIR = "panels"
TITLE_KEY_CHARS = 70


@dataclass(order=True)
class Row:
    """One output row picked for the contact sheet (ordered by parse score, then key)."""

    mean_confidence: float
    key: str
    id: int = field(compare=False)
    model_version: str = field(compare=False)
    width: int | None = field(compare=False)
    height: int | None = field(compare=False)
    confidences: list[float | None] = field(compare=False)
    file: OutputFile = field(compare=False)
    face_index: int = field(default=0, compare=False)
    face_count: int = field(default=1, compare=False)
    face_score: float | None = field(default=None, compare=False)
    panel: str | None = field(default=None, compare=False)  # path relative to index.html
    note: str | None = field(default=None, compare=False)

    @property
    def anchor(self) -> str:
        return f"face-{_hex(self.id)}-{self.face_index}"


@dataclass
class PhotoPanel:
    """A photo with several faces, drawn once with all of them."""

    id: int
    key: str
    face_count: int
    faces: list[int]  # face_index of the faces drawn (all the output holds for the image)
    panel: str | None = None
    note: str | None = None

    @property
    def anchor(self) -> str:
        return f"image-{_hex(self.id)}"


@dataclass
class ErrorRow:
    key: str
    code: str | None
    message: str | None
    model_version: str


@dataclass
class Selection:
    rows: list[Row]  # ascending parse score
    errors: list[ErrorRow]
    ok_total: int = 0
    error_total: int = 0
    no_face: list[str] = field(default_factory=list)  # keys of the first images without a face
    no_face_total: int = 0
    photos: dict[int, PhotoPanel] = field(default_factory=dict)  # by image id: the shown photos with several faces
    filters: list[str] = field(default_factory=list)  # what narrowed the rows (--where, --min-face), for the page
    faces_too_small: int = 0  # face rows --min-face left out


DEFAULT_MIN_FACE = REVIEW_MIN_FACE  # batch_parse/report/__init__.py says why


def render_output(dst: str | Location, out_dir: str | Path, limit: int = 50, *,
                  where: str | None = None, min_face: float | None = DEFAULT_MIN_FACE) -> Path:
    """Write out_dir/panels/**.png and out_dir/index.html for the `limit` least confident faces; returns index.html.

    where: export's --where clauses every row shown must match; min_face: the smallest face shown (box side, px;
    default DEFAULT_MIN_FACE, 0 or None = all), the smaller ones counted on the page.
    """
    return render(dst, out_dir, limit, where=where, min_face=min_face)[0]


def render(dst: str | Location, out_dir: str | Path, limit: int = 50, *,
           where: str | None = None, min_face: float | None = DEFAULT_MIN_FACE) -> tuple[Path, Selection]:
    """render_output, also returning what was picked (for the command's summary lines)."""
    from batch_parse.export.where import parse_where

    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if min_face is not None and not min_face >= 0:
        raise ValueError(f"--min-face must be >= 0 pixels, got {min_face}")
    condition = parse_where(where) if where else None  # before reading anything: a typo is one line
    output = open_output(dst)
    selection = select_rows(output, limit, condition, min_face)
    out_dir = Path(out_dir)
    (out_dir / PANELS_DIR).mkdir(parents=True, exist_ok=True)
    by_file: dict[str, list[Row]] = defaultdict(list)
    for row in selection.rows:
        by_file[row.file.path].append(row)
    from batch_parse.report.meter import Meter

    meter = Meter(len(selection.rows), "rendering", unit="faces", quiet_for=2.0)  # originals are fetched: can take a while
    drawn = 0
    for rows in by_file.values():
        selection.photos.update(_render_file_rows(output, rows, out_dir))
        drawn += len(rows)
        meter.set(drawn)
    meter.close(drawn)
    index = out_dir / "index.html"
    index.write_text(_index_html(output, selection), encoding="utf-8")
    return index, selection


def select_rows(output: Output, limit: int, where=None, min_face: float | None = None) -> Selection:
    """The `limit` ok rows of lowest parse score and the first `limit` error and no-face rows,
    among the rows `where` (a parsed export.where.Where) keeps and faces at least `min_face` px."""
    # Max-heap on the parse score via negation; among equal scores the earlier row stays.
    heap: list[tuple[float, int, Row]] = []
    errors: list[ErrorRow] = []
    selection = Selection(rows=[], errors=errors)
    if where is not None:
        selection.filters.append(f"--where {where}")
    if min_face:
        selection.filters.append(f"--min-face {min_face:g}")
    columns = list(dict.fromkeys((*SELECT_COLUMNS, *(where.columns if where is not None else ()))))
    sequence = 0
    for file, batch in output.batches(columns):
        status = batch.column("status")
        keep = where.mask(batch) if where is not None else np.ones(batch.num_rows, dtype=bool)
        is_ok = pc.equal(status, STATUS_OK).to_numpy(zero_copy_only=False) & keep
        if min_face:
            small = is_ok & ~(_face_sizes(batch) >= min_face)  # a face without a box has no size: left out too
            selection.faces_too_small += int(small.sum())
            is_ok &= ~small
        ok = np.flatnonzero(is_ok)
        failed = np.flatnonzero(pc.equal(status, STATUS_ERROR).to_numpy(zero_copy_only=False) & keep)
        faceless = np.flatnonzero(pc.equal(status, STATUS_NO_FACE).to_numpy(zero_copy_only=False) & keep)
        selection.ok_total += ok.size
        selection.error_total += failed.size
        selection.no_face_total += faceless.size
        for i in faceless[: max(0, limit - len(selection.no_face))]:
            selection.no_face.append(batch.column("key")[i].as_py())
        for i in failed[: max(0, limit - len(errors))]:
            errors.append(ErrorRow(*(batch.column(n)[i].as_py() for n in ("key", "error_code", "error", "model_version"))))
        if not ok.size:
            continue
        confidences = np.stack([batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in CONFIDENCE_COLUMNS], axis=1)
        # A row without any confidence is the least trustworthy of all: it sorts first (-1).
        means = np.nan_to_num(parse_scores(confidences), nan=-1.0)
        # Only the batch's own `limit` lowest can enter the heap: keeps Python work per batch small.
        candidates = ok if ok.size <= limit else ok[np.argpartition(means[ok], limit - 1)[:limit]]
        for i in candidates:
            key, row_id, version, width, height, face, count, score = (batch.column(n)[i].as_py() for n in (
                "key", "id", "model_version", "width", "height", "face_index", "face_count", "face_score"))
            confidence_list = [float(v) if np.isfinite(v) else None for v in confidences[i]]
            row = Row(float(means[i]), key, row_id, version, width, height, confidence_list, file, face, count, score)
            item = (-row.mean_confidence, -sequence, row)
            sequence += 1
            if len(heap) < limit:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    selection.rows = sorted(item[2] for item in heap)
    return selection


def _face_sizes(batch) -> np.ndarray:
    """The shorter side of each row's face box in pixels (NaN without a box)."""
    sizes = (face_size(b) for b in batch.column("face_box").to_pylist())
    return np.array([np.nan if v is None else v for v in sizes], np.float64)


def _render_file_rows(output: Output, rows: list[Row], out_dir: Path) -> dict[int, PhotoPanel]:
    """Panels of one file's picked faces, and of the photos among them with several faces."""
    ids = sorted({r.id for r in rows})
    table = output.read_rows(rows[0].file, PANEL_COLUMNS, ids)
    stored = {(record["id"], record["face_index"]): record for record in table.to_pylist()}
    _read_other_faces(output, rows, stored)
    keys = list(dict.fromkeys(r.key for r in rows))  # a group photo is fetched once for all its faces
    originals = dict(zip(keys, _fetch_originals(rows[0].file.metadata, keys, output.location)))
    for row in rows:
        _render_face(row, stored.get((row.id, row.face_index)), originals[row.key], out_dir)
    photos = {}
    for row in rows:
        if row.face_count > 1 and row.id not in photos and row.width and row.height:
            photos[row.id] = _render_photo(row, [r for k, r in sorted(stored.items()) if k[0] == row.id], originals[row.key], out_dir)
    return photos


def _read_other_faces(output: Output, rows: list[Row], stored: dict[tuple[int, int], dict]) -> None:
    """Add the faces of group photos that a block boundary put in another file (rare: other files are read only then)."""
    found = defaultdict(int)
    for row_id, _ in stored:
        found[row_id] += 1
    missing = {r.id for r in rows if r.face_count > found[r.id]}
    for file in output.files:
        if not missing:
            return
        if file.path == rows[0].file.path:
            continue
        for record in output.read_rows(file, PANEL_COLUMNS, sorted(missing)).to_pylist():
            stored.setdefault((record["id"], record["face_index"]), record)
        missing = {r.id for r in rows if r.face_count > sum(1 for k in stored if k[0] == r.id)}


def _placed(record: dict | None, width: int, height: int) -> np.ndarray | None:
    """The row's label map placed in a zero (height, width) map: the face in its photo."""
    face_map = _decode_label_map(record)
    if face_map is None:
        return None
    label_map = np.zeros((height, width), np.uint8)
    x0, y0 = record["label_map_x"], record["label_map_y"]
    h, w = face_map.shape
    label_map[y0 : y0 + h, x0 : x0 + w] = face_map[: height - y0, : width - x0]
    return label_map


def _original_for(original: tuple[np.ndarray | None, str | None], shape: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    image, note = original
    if image is not None and image.shape[:2] != shape:
        note = (f"source image is {image.shape[1]}x{image.shape[0]} now but the label map is "
                f"{shape[1]}x{shape[0]}: changed since labelling")  # fmt: skip
        image = None
    if image is None:
        note = f"original not shown, drawn from the label map alone: {note}"
    return image, note


def _face_geometry(record: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    landmarks = np.array(record["landmarks"], np.float64).reshape(5, 2) if record["landmarks"] else None
    face_box = np.array(record["face_box"], np.float64) if record["face_box"] else None
    return face_box, landmarks


def _render_face(row: Row, record: dict | None, original: tuple[np.ndarray | None, str | None], out_dir: Path) -> None:
    label_map = _placed(record, row.width, row.height) if row.width and row.height else None
    if label_map is None:
        row.note = "label map missing or unreadable: no panel"
        return
    image, note = _original_for(original, label_map.shape)
    boxes = np.array([record[f"{p}_box"] or [np.nan] * 4 for p in PART_NAMES], dtype=np.float64)
    crops = [_decode_crop(record[f"{p}_crop"]) for p in PART_NAMES]
    face_box, landmarks = _face_geometry(record)
    # Zoom to the face: in a group photo a whole-image tile would make each face a few pixels.
    x0, y0, x1, y1 = _around(face_box, row.width, row.height)
    shift = np.array([x0, y0, x0, y0], np.float64)
    label_map = label_map[y0:y1, x0:x1]
    image = None if image is None else image[y0:y1, x0:x1]
    picture = panel(image, label_map, boxes - shift, row.confidences, crops, _title(row), note,
                    face_box=None if face_box is None else face_box - shift,
                    landmarks=None if landmarks is None else landmarks - shift[:2],
                    class_names=file_class_names(row.file.metadata))
    relative = f"{PANELS_DIR}/{_slug(row.model_version)}/{_hex(row.id)}-{row.face_index}.png"
    (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    picture.save(out_dir / relative)
    row.panel, row.note = relative, note


def _render_photo(row: Row, records: list[dict], original: tuple[np.ndarray | None, str | None], out_dir: Path) -> PhotoPanel:
    """The whole photo once, with the union of its faces' label maps (larger faces first, as exports build it)."""
    photo = PhotoPanel(row.id, row.key, row.face_count, [r["face_index"] for r in records])
    label_map = np.zeros((row.height, row.width), np.uint8)
    faces = []
    for record in records:  # face_index order
        placed = _placed(record, row.width, row.height)
        if placed is not None:
            np.copyto(label_map, placed, where=label_map == 0)
        faces.append((record["face_index"], *_face_geometry(record)))
    image, note = _original_for(original, label_map.shape)
    if len(records) < row.face_count:
        note = "; ".join(filter(None, [note, f"{len(records)} of {row.face_count} faces found in the output"]))
    key = row.key if len(row.key) <= TITLE_KEY_CHARS else "..." + row.key[-(TITLE_KEY_CHARS - 3) :]
    title = f"{key}   {row.face_count} faces, boxes numbered by face_index   {row.width}x{row.height}   {row.model_version}"
    relative = f"{PANELS_DIR}/{_slug(row.model_version)}/{_hex(row.id)}-photo.png"
    (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    photo_panel(image, label_map, faces, title, note, class_names=file_class_names(row.file.metadata)).save(out_dir / relative)
    photo.panel, photo.note = relative, note
    return photo


FACE_CONTEXT = 2.0  # panel side / face box side: the face with its hair, ears and chin around it


def _around(face_box: np.ndarray | None, width: int, height: int) -> tuple[int, int, int, int]:
    """The square region of the photo a face's panel shows (the whole photo for whole-image rows)."""
    if face_box is None or not np.all(np.isfinite(face_box)):
        return 0, 0, width, height
    cx, cy = (face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2
    half = FACE_CONTEXT * max(face_box[2] - face_box[0], face_box[3] - face_box[1]) / 2
    x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
    x1, y1 = min(width, int(np.ceil(cx + half))), min(height, int(np.ceil(cy + half)))
    if x1 <= x0 or y1 <= y0:
        return 0, 0, width, height
    return x0, y0, x1, y1


def _fetch_originals(metadata: dict, keys: list[str], output: Location) -> list[tuple[np.ndarray | None, str | None]]:
    """(image, None) or (None, why not) for each key, fetched from the file's recorded source."""
    originals = []
    for data in fetch_originals(metadata, keys, output):
        if isinstance(data, FetchError):
            originals.append((None, data.message))
            continue
        try:
            originals.append((decode_image(data, DEFAULT_MAX_PIXELS), None))
        except DecodeError as exc:
            originals.append((None, exc.message))
    return originals


def _decode_label_map(record: dict | None) -> np.ndarray | None:
    if record is None or not record.get("label_map"):
        return None
    try:
        return decode_label_map(record["label_map"])
    except ValueError:  # any undecodable map is reported the same way
        return None


def _decode_crop(data: bytes | None) -> Image.Image | None:
    if not data:
        return None
    try:
        return Image.fromarray(decode_crop(data))
    except ValueError:  # an unreadable crop shows as "no crop"
        return None


def _title(row: Row) -> str:
    key = row.key if len(row.key) <= TITLE_KEY_CHARS else "..." + row.key[-(TITLE_KEY_CHARS - 3) :]
    return (f"{key}   face_index {row.face_index} of {row.face_count} faces{_score(row.face_score)}   {row.width}x{row.height}   "
            f"parse score {_confidence(row.mean_confidence)}   {row.model_version}")


def _hex(row_id: int) -> str:
    """An id as 16 hex digits (ids are signed 64-bit; the hex of the same bits names files and anchors)."""
    return f"{row_id & 0xFFFFFFFFFFFFFFFF:016x}"


def export_where(row_id: int, face_index: int | None = None) -> str:
    """The --where of `batch-parse export` that selects exactly this face (or image)."""
    clause = f"id == {row_id}"
    return clause if face_index is None else f"{clause} and face_index == {face_index}"


def _score(score: float | None) -> str:
    return "" if score is None else f" (detector {score:.2f})"


def _confidence(value: float | None) -> str:
    return "n/a" if value is None or value < 0 else f"{value:.3f}"


def _slug(model_version: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in model_version.replace("@", "-"))


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.legend span { display: inline-block; margin-right: 1em; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; border: 1px solid #888; margin-right: .3em; }
figure { margin: 0 0 1.5em 0; border-top: 1px solid #ccc; padding-top: .5em; }
figure img { max-width: 100%; }
figcaption { font-size: .9em; }
.note { color: #b00; }
.photo { background: #f6f6f6; }
code { font-size: .95em; background: #f0f0f0; padding: 0 .2em; }
table { border-collapse: collapse; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .2em .5em; text-align: left; }
"""


def _index_html(output: Output, selection: Selection) -> str:
    e = html.escape
    # Every file's classes are a prefix of labels.CLASS_NAMES: the longest list covers them all.
    names = max((file_class_names(f.metadata) for f in output.files), key=len, default=CLASS_NAMES)
    legend = "".join(
        f'<span><span class="swatch" style="background: rgb{tuple(color)}"></span>{e(name)}</span>'
        for name, color in zip(names, CLASS_COLORS)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>batch-parse review: {e(output.location.uri)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>batch-parse review of {e(output.location.uri)}</h1>",
        f"<p><strong>Faces are ordered by ascending parse score</strong> ({e(PARSE_SCORE_DOC)}), "
        "so the most doubtful labels come first.</p>",
        *([f"<p>Rows narrowed by <code>{e(' '.join(selection.filters))}</code>"
           + (f"; {selection.faces_too_small:,} smaller face(s) left out" if selection.faces_too_small else "") + ".</p>"]
          if selection.filters else []),
        f"<p>{len(selection.rows)} of {selection.ok_total:,} faces shown; {selection.no_face_total:,} image(s) without a face "
        f"and {selection.error_total:,} error row(s), listed at the end.</p>",
        f'<p class="legend">{legend}</p>',
        "<p>Each panel: the original with the face box, its five landmarks and the six part windows | the label "
        "overlay | the class legend | the upright part crops with their confidences. A photo with several faces is "
        "shown whole once, its boxes numbered by face_index, before the first of its faces.</p>",
        "<p>Each face names its row key (<code>id</code>, <code>face_index</code>) and the <code>--where</code> that "
        "exports exactly that row: <code>batch-parse export DST OUT --to cvat --where \"...\"</code>.</p>",
    ]
    shown_photos: set[int] = set()
    faces_shown: dict[int, dict[int, Row]] = defaultdict(dict)
    for row in selection.rows:
        faces_shown[row.id][row.face_index] = row
    for rank, row in enumerate(selection.rows, 1):
        photo = selection.photos.get(row.id)
        if photo is not None and row.id not in shown_photos:
            shown_photos.add(row.id)
            parts.append(_photo_figure(photo, faces_shown[row.id]))
        confidences = ", ".join(f"{e(name)} {_confidence(c)}" for name, c in zip(PART_NAMES, row.confidences))
        where = export_where(row.id, row.face_index)
        caption = (
            f"#{rank} <strong>{e(row.key)}</strong> &middot; face_index {row.face_index} of {row.face_count} faces"
            f"{e(_score(row.face_score))} &middot; {row.width}x{row.height} &middot; "
            f"parse score {_confidence(row.mean_confidence)} &middot; {e(row.model_version)}<br>{confidences}<br>"
            f'row <a href="#{row.anchor}">id {row.id}, face_index {row.face_index}</a> &middot; '
            f"export it: <code>--where \"{e(where)}\"</code>"
        )
        if photo is not None:
            caption += f' &middot; <a href="#{photo.anchor}">the whole photo with its {row.face_count} faces</a>'
        if row.note:
            caption += f'<br><span class="note">{e(row.note)}</span>'
        image = f'<img src="{e(row.panel)}" alt="{e(row.key)}" loading="lazy">' if row.panel else ""
        parts.append(f'<figure id="{row.anchor}">{image}<figcaption>{caption}</figcaption></figure>')
    if selection.no_face:
        shown = len(selection.no_face)
        more = f" (first {shown} of {selection.no_face_total:,})" if shown < selection.no_face_total else ""
        parts.append(f"<h2>Images without a face{more}</h2><ul>")
        parts += [f"<li>{e(key)}</li>" for key in selection.no_face]
        parts.append("</ul>")
    if selection.errors:
        shown = len(selection.errors)
        more = f" (first {shown} of {selection.error_total:,})" if shown < selection.error_total else ""
        parts.append(f"<h2>Error rows{more}</h2>")
        parts.append("<table><tr><th>key</th><th>error_code</th><th>error</th><th>model_version</th></tr>")
        for err in selection.errors:
            parts.append(
                f"<tr><td>{e(err.key)}</td><td>{e(err.code or '')}</td><td>{e(err.message or '')}</td><td>{e(err.model_version)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _photo_figure(photo: PhotoPanel, shown: dict[int, Row]) -> str:
    """The whole photo, with a link to each of its faces on the page (the others are more confident)."""
    e = html.escape
    links = []
    # Least confident first, like the page; faces not picked for the page come last.
    order = sorted(photo.faces, key=lambda i: (i not in shown, shown[i].mean_confidence if i in shown else 0.0, i))
    for index in order:
        row = shown.get(index)
        if row is None:
            links.append(f"face_index {index} (not among the least confident shown)")
        else:
            links.append(f'<a href="#{row.anchor}">face_index {index}</a> (parse score {_confidence(row.mean_confidence)})')
    caption = (
        f"<strong>{e(photo.key)}</strong> &middot; {photo.face_count} faces &middot; id {photo.id} &middot; "
        f"export the photo: <code>--where \"{e(export_where(photo.id))}\"</code><br>" + " &middot; ".join(links)
    )
    if photo.note:
        caption += f'<br><span class="note">{e(photo.note)}</span>'
    image = f'<img src="{e(photo.panel)}" alt="{e(photo.key)}" loading="lazy">' if photo.panel else ""
    return f'<figure class="photo" id="{photo.anchor}">{image}<figcaption>{caption}</figcaption></figure>'
