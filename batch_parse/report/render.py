"""`render`: review panels (PNG) of the least confident rows of an output, and an index.html contact sheet.

Two passes over the output: the small columns pick the `limit` ok rows with the lowest mean part
confidence (and the first error rows); then label maps and crops are read for those rows only.
The original image is not in the output, so it is fetched again from the source recorded in
each file's metadata; when that fails the panel is drawn from the label map alone and says why.
"""

from __future__ import annotations

import heapq
import html
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from batch_parse.labels import CLASS_COLORS, CLASS_NAMES, PART_NAMES
from batch_parse.pipeline.decode import DecodeError, decode_image
from batch_parse.pipeline.options import DEFAULT_MAX_PIXELS
from batch_parse.pipeline.schema import STATUS_ERROR, STATUS_OK
from batch_parse.report.overlay import panel
from batch_parse.report.reader import Output, OutputFile, open_output
from batch_parse.storage.fetch import FetchError, fetch_objects
from batch_parse.storage.location import parse_location
from batch_parse.storage.s3 import describe_error

CONFIDENCE_COLUMNS = tuple(f"{p}_confidence" for p in PART_NAMES)
SELECT_COLUMNS = ("id", "key", "status", "error_code", "error", "width", "height", "model_version", *CONFIDENCE_COLUMNS)
PANEL_COLUMNS = ("id", "label_map", *(f"{p}_crop" for p in PART_NAMES), *(f"{p}_box" for p in PART_NAMES))
PANELS_DIR = "panels"
TITLE_KEY_CHARS = 70


@dataclass(order=True)
class Row:
    """One output row picked for the contact sheet (ordered by mean confidence, then key)."""

    mean_confidence: float
    key: str
    id: int = field(compare=False)
    model_version: str = field(compare=False)
    width: int | None = field(compare=False)
    height: int | None = field(compare=False)
    confidences: list[float | None] = field(compare=False)
    file: OutputFile = field(compare=False)
    panel: str | None = field(default=None, compare=False)  # path relative to index.html
    note: str | None = field(default=None, compare=False)


@dataclass
class ErrorRow:
    key: str
    code: str | None
    message: str | None
    model_version: str


@dataclass
class Selection:
    rows: list[Row]  # ascending mean confidence
    errors: list[ErrorRow]
    ok_total: int = 0
    error_total: int = 0


def render_output(dst: str, out_dir: str | Path, limit: int = 50, endpoint_url: str | None = None) -> Path:
    """Write out_dir/panels/**.png and out_dir/index.html for the `limit` least confident rows; returns index.html."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    output = open_output(dst, endpoint_url)
    selection = select_rows(output, limit)
    out_dir = Path(out_dir)
    (out_dir / PANELS_DIR).mkdir(parents=True, exist_ok=True)
    by_file: dict[str, list[Row]] = defaultdict(list)
    for row in selection.rows:
        by_file[row.file.path].append(row)
    for rows in by_file.values():
        _render_file_rows(output, rows, out_dir, endpoint_url)
    index = out_dir / "index.html"
    index.write_text(_index_html(output, selection), encoding="utf-8")
    return index


def select_rows(output: Output, limit: int) -> Selection:
    """The `limit` ok rows of lowest mean confidence and the first `limit` error rows."""
    # Max-heap on mean confidence via negation; among equal means the earlier row stays.
    heap: list[tuple[float, int, Row]] = []
    errors: list[ErrorRow] = []
    selection = Selection(rows=[], errors=errors)
    sequence = 0
    for file, batch in output.batches(SELECT_COLUMNS):
        status = batch.column("status")
        ok = np.flatnonzero(pc.equal(status, STATUS_OK).to_numpy(zero_copy_only=False))
        failed = np.flatnonzero(pc.equal(status, STATUS_ERROR).to_numpy(zero_copy_only=False))
        selection.ok_total += ok.size
        selection.error_total += failed.size
        for i in failed[: max(0, limit - len(errors))]:
            errors.append(ErrorRow(*(batch.column(n)[i].as_py() for n in ("key", "error_code", "error", "model_version"))))
        if not ok.size:
            continue
        confidences = np.stack([batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in CONFIDENCE_COLUMNS], axis=1)
        finite = np.isfinite(confidences)
        counts = finite.sum(axis=1)
        # A row without any confidence is the least trustworthy of all: it sorts first (-1).
        means = np.where(counts > 0, np.where(finite, confidences, 0).sum(axis=1) / np.maximum(counts, 1), -1.0)
        # Only the batch's own `limit` lowest can enter the heap: keeps Python work per batch small.
        candidates = ok if ok.size <= limit else ok[np.argpartition(means[ok], limit - 1)[:limit]]
        for i in candidates:
            key, row_id, version, width, height = (batch.column(n)[i].as_py() for n in ("key", "id", "model_version", "width", "height"))
            confidence_list = [float(v) if np.isfinite(v) else None for v in confidences[i]]
            row = Row(float(means[i]), key, row_id, version, width, height, confidence_list, file)
            item = (-row.mean_confidence, -sequence, row)
            sequence += 1
            if len(heap) < limit:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    selection.rows = sorted(item[2] for item in heap)
    return selection


def _render_file_rows(output: Output, rows: list[Row], out_dir: Path, endpoint_url: str | None) -> None:
    table = output.read_rows(rows[0].file, PANEL_COLUMNS, [r.id for r in rows])
    stored = {record["id"]: record for record in table.to_pylist()}
    originals = _fetch_originals(rows[0].file.metadata, [r.key for r in rows], endpoint_url)
    for row, original in zip(rows, originals):
        record = stored.get(row.id)
        label_map = _decode_label_map(record)
        if label_map is None:
            row.note = "label map missing or unreadable: no panel"
            continue
        image, note = original
        if image is not None and image.shape[:2] != label_map.shape:
            note = (f"source image is {image.shape[1]}x{image.shape[0]} now but the label map is "
                    f"{label_map.shape[1]}x{label_map.shape[0]}: changed since labelling")  # fmt: skip
            image = None
        if image is None:
            note = f"original not shown, drawn from the label map alone: {note}"
        boxes = np.array([record[f"{p}_box"] or [np.nan] * 4 for p in PART_NAMES], dtype=np.float64)
        crops = [_decode_crop(record[f"{p}_crop"]) for p in PART_NAMES]
        picture = panel(image, label_map, boxes, row.confidences, crops, _title(row), note)
        relative = f"{PANELS_DIR}/{_slug(row.model_version)}/{row.id & 0xFFFFFFFFFFFFFFFF:016x}.png"
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        picture.save(out_dir / relative)
        row.panel, row.note = relative, note


def _fetch_originals(metadata: dict, keys: list[str], endpoint_url: str | None) -> list[tuple[np.ndarray | None, str | None]]:
    """(image, None) or (None, why not) for each key, fetched from the file's recorded source."""
    source = metadata.get("source")
    if not source:
        return [(None, "source location not recorded in the output file")] * len(keys)
    # The job had one endpoint for source and output; files record it, older ones may not.
    endpoint = metadata.get("endpoint_url") or endpoint_url
    try:
        location = parse_location(source)
        fetched = fetch_objects(keys, location, endpoint)
    except Exception as exc:  # bad URI, no credentials, unreachable endpoint: the panels still render
        return [(None, describe_error(exc))] * len(keys)
    originals = []
    for data in fetched:
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
        with Image.open(io.BytesIO(record["label_map"])) as image:
            return np.asarray(image.convert("L") if image.mode != "L" else image, dtype=np.uint8)
    except Exception:  # noqa: BLE001 - any undecodable map is reported the same way
        return None


def _decode_crop(data: bytes | None) -> Image.Image | None:
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except Exception:  # noqa: BLE001 - an unreadable crop shows as "no crop"
        return None


def _title(row: Row) -> str:
    key = row.key if len(row.key) <= TITLE_KEY_CHARS else "..." + row.key[-(TITLE_KEY_CHARS - 3) :]
    return f"{key}   {row.width}x{row.height}   mean confidence {_confidence(row.mean_confidence)}   {row.model_version}"


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
table { border-collapse: collapse; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .2em .5em; text-align: left; }
"""


def _index_html(output: Output, selection: Selection) -> str:
    e = html.escape
    legend = "".join(
        f'<span><span class="swatch" style="background: rgb{tuple(color)}"></span>{e(name)}</span>'
        for name, color in zip(CLASS_NAMES, CLASS_COLORS)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>batch-parse review: {e(output.location.uri)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>batch-parse review of {e(output.location.uri)}</h1>",
        "<p><strong>Rows are ordered by ascending mean part confidence</strong> (the mean of the six part "
        "confidences), so the most doubtful labels come first.</p>",
        f"<p>{len(selection.rows)} of {selection.ok_total:,} labelled rows shown; "
        f"{selection.error_total:,} error row(s), listed at the end.</p>",
        f'<p class="legend">{legend}</p>',
        "<p>Each panel: the original with the six part windows | the label overlay | the class legend | "
        "the part crops with their confidences.</p>",
    ]
    for rank, row in enumerate(selection.rows, 1):
        confidences = ", ".join(f"{e(name)} {_confidence(c)}" for name, c in zip(PART_NAMES, row.confidences))
        caption = (
            f"#{rank} <strong>{e(row.key)}</strong> &middot; id {row.id} &middot; {row.width}x{row.height} &middot; "
            f"mean confidence {_confidence(row.mean_confidence)} &middot; {e(row.model_version)}<br>{confidences}"
        )
        if row.note:
            caption += f'<br><span class="note">{e(row.note)}</span>'
        image = f'<img src="{e(row.panel)}" alt="{e(row.key)}" loading="lazy">' if row.panel else ""
        parts.append(f"<figure>{image}<figcaption>{caption}</figcaption></figure>")
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
