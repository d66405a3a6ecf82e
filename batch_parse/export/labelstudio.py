"""Label Studio: tasks.json with pre-annotations (`predictions`) and the labeling config that reads them.

Each part class of each face is one `brushlabels` result in Label Studio's own RLE (the
rle-pack bit stream its brush tool decodes: an RGBA image of the photo's size, flattened), and
each face one `rectanglelabels` box. labeling_config.xml has one <BrushLabels> label per class
with our colours, for the classes of the output's model only (its metadata's `class_names`: a
9-class output offers no `skin` to paint, which its import could not take back). Import: create a project, paste the config (Settings > Labeling Interface >
Code), then Import tasks.json.

Parse quality, where Label Studio sorts and filters by it: each brush region's `score` is its
part's confidence (none for skin) and each face box's `score` the face's parse score (output/quality.py); the
prediction's `score` (the Data Manager's "Prediction score" column) is the image's lowest parse
score, and the task `data` holds columns to sort and filter by: `parse_score` (lowest over the
faces), `parse_score_mean`, `face_score_min` (detector), `smallest_face_px`, `parts_missing`
(parts not found, all faces) and `<part>_confidence` (lowest over the faces).

Images: `data.image` is `s3://bucket/key` for S3 sources (connect the bucket as source storage),
otherwise `/data/local-files/?d=<path>` with the path relative to the image root: the job's
source folder, or OUT with --copy-images. Start Label Studio with
LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<that root>.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from batch_parse.export.faces import Originals, Photo
from batch_parse.labels import CLASS_NAMES, CLASS_PART, PART_NAMES
from batch_parse.output.quality import PARSE_SCORE
from batch_parse.storage.location import parse_location

COLUMNS: tuple[str, ...] = ()
TASKS = "tasks.json"
CONFIG = "labeling_config.xml"
IMAGE_TAG, BRUSH_TAG, FACE_TAG = "image", "parts", "face"
FACE_LABEL = "face"
LOCAL_FILES_URL = "/data/local-files/?d="
# rle-pack header: 8-bit words and these four run-length field widths (Label Studio's own choice).
WORD_BITS = 8
RUN_BITS = (3, 4, 8, 16)
CHANNELS = 4  # the brush mask is RGBA; all four channels carry the mask


# Our brush RLE, not label-studio-sdk's converter (issue 27 item 8), for measured reasons: `pip install
# label-studio-sdk` (2.1.2, Apache-2.0) would pull 29 more packages into a labelling job's
# environment (black, Faker, datamodel-code-generator, opencv-python-headless, rich, typer, ...) and
# pin numpy back to 2.2; and its mask2rle, a Python loop per pixel, took 3.4 ms for a 640x480 part
# mask and 37.5 ms for 1440x1080 where brush_rle takes 1.0 and 7.5 ms (runs from the mask's
# transitions), for the same bytes. Both directions are checked against the converter's own
# decoder and encoder in tests/test_export.py and tests/test_import.py.


def check_installed() -> None:
    """Nothing: the RLE is written here and checked against label-studio-converter's decoder in the tests."""


def labeling_config(class_names: tuple[str, ...], class_colors: tuple[tuple[int, int, int], ...], licence=None) -> str:
    """The project's labeling interface; licence (model/licence.py) is shown above every task."""
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} background={quoteattr('#' + bytes(color).hex())}/>"
        for name, color in zip(class_names[1:], class_colors[1:])
    )
    notice = f"  <Header value={quoteattr('Labels: ' + licence.name + ' - ' + licence.terms)} size=\"6\"/>\n" if licence else ""
    return (
        "<View>\n"
        '  <Header value="$key"/>\n'
        f"{notice}"
        f'  <Image name="{IMAGE_TAG}" value="$image" zoom="true" zoomControl="true"/>\n'
        f'  <BrushLabels name="{BRUSH_TAG}" toName="{IMAGE_TAG}">\n{labels}\n  </BrushLabels>\n'
        f'  <RectangleLabels name="{FACE_TAG}" toName="{IMAGE_TAG}">\n'
        f'    <Label value="{FACE_LABEL}" background="#ffffff"/>\n'
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def brush_rle(mask: np.ndarray) -> list[int]:
    """A (height, width) bool mask in Label Studio's brush RLE (bytes as ints).

    The stream is rle-pack's: 32-bit value count, 5-bit word size - 1, four 4-bit run-field widths - 1,
    then per run `1`, a 2-bit field choice, the run length - 1 and the 8-bit value. Runs come from
    the mask's transitions only, so the cost is per run, not per pixel.
    """
    flat = np.asarray(mask, dtype=bool).ravel()
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = np.diff(np.concatenate((starts, [flat.size]))) * CHANNELS
    bits = [f"{flat.size * CHANNELS:032b}", f"{WORD_BITS - 1:05b}", *(f"{b - 1:04b}" for b in RUN_BITS)]
    longest = 1 << RUN_BITS[-1]
    for start, length in zip(starts.tolist(), lengths.tolist()):
        value = f"{255 if flat[start] else 0:08b}"
        while length:
            run = min(length, longest)
            choice = next(i for i, b in enumerate(RUN_BITS) if run - 1 < (1 << b))
            bits.append(f"1{choice:02b}{run - 1:0{RUN_BITS[choice]}b}{value}")
            length -= run
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return list(int(stream, 2).to_bytes(len(stream) // 8, "big"))


def _image_url(photo: Photo, copied: str | None) -> str:
    if copied is not None:
        return LOCAL_FILES_URL + quote(copied)
    if photo.source and parse_location(photo.source).is_s3:
        return photo.uri()
    return LOCAL_FILES_URL + quote(photo.key)


def _task(photo: Photo, copied: str | None) -> tuple[dict, int]:
    results = []
    w, h = photo.width, photo.height
    for face in photo.faces:
        if face.box is None:
            continue
        x0, y0, x1, y1 = np.clip(face.box, 0, [w, h, w, h]).tolist()
        results.append({
            "id": f"face{face.index}", "from_name": FACE_TAG, "to_name": IMAGE_TAG, "type": "rectanglelabels",
            "original_width": w, "original_height": h, "image_rotation": 0, "score": face.parse_score,
            "value": {"x": 100 * x0 / w, "y": 100 * y0 / h, "width": 100 * (x1 - x0) / w, "height": 100 * (y1 - y0) / h,
                      "rotation": 0, "rectanglelabels": [FACE_LABEL]},
        })  # fmt: skip
    parts = 0
    for position, cls, mask in photo.parts():
        face = photo.faces[position]
        results.append({
            "id": f"face{face.index}-{CLASS_NAMES[cls]}", "from_name": BRUSH_TAG, "to_name": IMAGE_TAG, "type": "brushlabels",
            "original_width": w, "original_height": h, "image_rotation": 0, "score": face.part_confidence(CLASS_PART[cls]),
            "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": [CLASS_NAMES[cls]]},
        })  # fmt: skip
        parts += 1
    data = {"image": _image_url(photo, copied), "key": photo.key, "batch_parse_id": str(photo.id), "face_count": len(photo.faces),
            **quality_fields(photo)}  # fmt: skip
    task = {
        "data": data,
        "predictions": [{"model_version": photo.model_version, "score": data[PARSE_SCORE], "result": results}],
    }
    return task, parts


def _lowest(values) -> float | None:
    values = [v for v in values if v is not None]
    return min(values) if values else None


def quality_fields(photo: Photo) -> dict:
    """The task `data` columns of parse quality (None for an image without faces)."""
    scores = photo.parse_scores()
    return {
        PARSE_SCORE: min(scores) if scores else None,
        f"{PARSE_SCORE}_mean": sum(scores) / len(scores) if scores else None,
        "face_score_min": _lowest(f.score for f in photo.faces),
        "smallest_face_px": _lowest(f.size for f in photo.faces),
        "parts_missing": sum(len(PART_NAMES) - f.parts_found for f in photo.faces),
        **{f"{part}_confidence": _lowest(f.part_confidence(p) for f in photo.faces) for p, part in enumerate(PART_NAMES)},
    }


def export(photos: Iterable[Photo], out: Path, originals: Originals | None, result, labels) -> None:
    (out / CONFIG).write_text(labeling_config(labels.class_names, labels.class_colors, labels.licence), encoding="utf-8")
    with open(out / TASKS, "w", encoding="utf-8") as f:
        f.write("[")
        for photo in photos:
            copied = originals.copy(photo, out) if originals is not None else None
            result.copied += copied is not None
            task, parts = _task(photo, copied)
            task["data"]["licence"] = labels.licence.name  # travels with every task, and into Label Studio's exports
            f.write(("\n" if result.images == 0 else ",\n") + json.dumps(task, separators=(",", ":")))
            result.images += 1
            result.faces += len(photo.faces)
            result.parts += parts
        f.write("\n]\n")
    result.files += [TASKS, CONFIG]
