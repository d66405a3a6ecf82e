"""Label Studio's JSON export of reviewed tasks, read back: brush RLE parts, face boxes, who and when.

Expects what Label Studio writes under Export > JSON for a project made from
`batch-parse export --to labelstudio`: a list of tasks, each with our `data` (`batch_parse_id`,
`key`) and `annotations[]`, each annotation with `result[]` (`brushlabels` in Label Studio's RLE,
`rectanglelabels` face boxes), `completed_by`, `updated_at` and `was_cancelled`. Of a task's
annotations the latest submitted one (not cancelled, latest `updated_at`) counts; tasks without
one were not reviewed and are skipped. Brush regions paint the photo in result order (a later
region wins where two overlap); a pixel counts as painted where the mask's alpha is >= 128.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from batch_parse.corrections.split import FaceRegion

BRUSH, RECTANGLE = "brushlabels", "rectanglelabels"
RESULT_ID = re.compile(r"^face(\d+)(?:-|$)")  # our export's result ids: face<N> (box), face<N>-<class> (part)
CHANNELS = 4
IOU_MATCH = 0.5  # a box without our id is that face's when it overlaps its detector box this much


@dataclass
class Task:
    """One reviewed task: the photo it names and its latest submitted annotation."""

    where: str  # "task 12" for messages
    id: int  # data.batch_parse_id
    key: str | None
    results: list[dict]
    corrected_by: str | None
    corrected_at: datetime | None


@dataclass
class Drawn:
    """What a task's annotation says about its photo."""

    classes: np.ndarray  # (height, width) uint8: the reviewer's class map
    hint: np.ndarray  # (height, width) int32: the face position a region's id names, -1 where none
    boxes: dict[int, list[float]] = field(default_factory=dict)  # face position -> [x0, y0, x1, y1] as drawn
    unmatched_boxes: int = 0


def read_tasks(path: Path) -> tuple[list[Task], int]:
    """The reviewed tasks of a Label Studio JSON export and how many tasks had no submitted annotation."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a Label Studio JSON export: not UTF-8 text") from None
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
                         "give the file of Label Studio's Export > JSON") from None
    if isinstance(tasks, dict) and "data" in tasks:
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ValueError(f"{path} is not a Label Studio JSON export: expected a list of tasks, found {type(tasks).__name__}")
    reviewed, skipped = [], 0
    for number, task in enumerate(tasks):
        where = f"task {task.get('id', number)}"
        data = task.get("data")
        if not isinstance(data, dict) or "annotations" not in task and "predictions" not in task:
            raise ValueError(f"{path}: {where} is not a Label Studio task (no data/annotations): give the file of Export > JSON")
        raw_id = data.get("batch_parse_id")
        try:
            image_id = int(raw_id)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {where} has no data.batch_parse_id (key {data.get('key')!r}): "
                             "its tasks were not made by `batch-parse export --to labelstudio`") from None
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not annotations:
            skipped += 1
            continue
        latest = max(enumerate(annotations), key=lambda ia: (_time(ia[1].get("updated_at") or ia[1].get("created_at")) or _EPOCH, ia[0]))[1]
        results = latest.get("result")
        if not isinstance(results, list):
            raise ValueError(f"{path}: {where}: annotation without a result list")
        reviewed.append(Task(where, image_id, data.get("key"), results, _who(latest.get("completed_by")),
                             _time(latest.get("updated_at") or latest.get("created_at"))))
    return reviewed, skipped


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _time(value) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _who(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("email") or value.get("id")
    return None if value in (None, "") else str(value)


def decode_brush(rle: list[int], size: int) -> np.ndarray:
    """Label Studio's brush RLE (rle-pack: RGBA values, flattened) -> the (size,) bool mask (alpha >= 128).

    The stream: 32-bit value count, 5-bit word size - 1, four 4-bit run-field widths - 1, then
    blocks of `1` + 2-bit field choice + length - 1 + one word (a run), or `0` + choice + length - 1
    + that many words (literals).
    """
    try:
        raw = bytes(rle)
    except (TypeError, ValueError):
        raise ValueError("brush RLE is not a list of bytes") from None
    bits = "".join(f"{b:08b}" for b in raw)
    position = 0

    def read(n: int) -> int:
        nonlocal position
        if position + n > len(bits):
            raise ValueError("brush RLE ends early")
        value = int(bits[position : position + n], 2)
        position += n
        return value

    count = read(32)
    if count != size * CHANNELS:
        raise ValueError(f"brush mask holds {count // CHANNELS} pixels, the image has {size}")
    word = read(5) + 1
    widths = [read(4) + 1 for _ in range(4)]
    values = np.zeros(count, np.uint8)
    i = 0
    while i < count:
        run = read(1)
        length = read(widths[read(2)]) + 1
        end = min(i + length, count)
        if run:
            values[i:end] = read(word)
        else:
            for j in range(i, end):
                values[j] = read(word)
        i = end
    return values.reshape(-1, CHANNELS)[:, 3] >= 128


def unknown_labels(tasks: list[Task], class_names: list[str]) -> list[tuple[Task, str, int]]:
    """(task, label, regions) for every brush label the output's model lacks (e.g. `skin` painted on
    a 9-class output), checked before any row is read so an import never fails half way."""
    found: dict[tuple[int, str], list] = {}
    for number, task in enumerate(tasks):
        for result in task.results:
            if not isinstance(result, dict) or result.get("type") != BRUSH:
                continue
            labels = (result.get("value") or {}).get(BRUSH) or []
            for label in labels if isinstance(labels, list) else [labels]:
                if label not in class_names[1:]:
                    found.setdefault((number, str(label)), [task, str(label), 0])[2] += 1
    return [tuple(v) for v in found.values()]


def drawn(task: Task, width: int, height: int, faces: list[FaceRegion], class_names: list[str],
          skip_unknown: bool = False) -> Drawn:
    """Paint the task's brush regions into a class map of the photo's size; match its boxes to faces.

    skip_unknown: leave out regions labelled with a class the output's model lacks (unknown_labels
    says which), as if they were not drawn; otherwise they are an error."""
    classes = np.zeros((height, width), np.uint8)
    hint = np.full((height, width), -1, np.int32)
    positions = {f.index: k for k, f in enumerate(faces)}
    out = Drawn(classes, hint)
    boxes: list[tuple[int | None, list[float]]] = []
    for number, result in enumerate(task.results):
        if not isinstance(result, dict):
            continue
        kind = result.get("type")
        value = result.get("value") or {}
        if kind not in (BRUSH, RECTANGLE):
            continue
        size = (result.get("original_width"), result.get("original_height"))
        if None not in size and size != (width, height):
            raise ValueError(f"{task.where} (key {task.key!r}) result {number}: drawn on a {size[0]}x{size[1]} image, "
                             f"the image in the original output is {width}x{height}")
        named = RESULT_ID.match(str(result.get("id", "")))
        face = positions.get(int(named.group(1))) if named else None
        if kind == RECTANGLE:
            x, y = value.get("x", 0) * width / 100, value.get("y", 0) * height / 100
            boxes.append((face, [x, y, x + value.get("width", 0) * width / 100, y + value.get("height", 0) * height / 100]))
            continue
        if value.get("format") != "rle" or not isinstance(value.get("rle"), list):
            raise ValueError(f"{task.where} (key {task.key!r}) result {number}: a brush region not in RLE format")
        labels = value.get(BRUSH) or []
        if skip_unknown and len(labels) == 1 and labels[0] not in class_names[1:]:
            continue
        if len(labels) != 1 or labels[0] not in class_names[1:]:
            raise ValueError(f"{task.where} (key {task.key!r}) result {number}: brush label {labels!r} is not one part class "
                             f"({', '.join(class_names[1:])})")
        try:
            mask = decode_brush(value["rle"], width * height).reshape(height, width)
        except ValueError as exc:
            raise ValueError(f"{task.where} (key {task.key!r}) result {number}: {exc}") from None
        classes[mask] = class_names.index(labels[0])
        hint[mask] = -1 if face is None else face
    taken = {face for face, _ in boxes if face is not None}
    for face, box in boxes:
        if face is None:
            face = _best_overlap(box, faces, taken)
            if face is None:
                out.unmatched_boxes += 1
                continue
            taken.add(face)
        out.boxes[face] = box
    return out


def _best_overlap(box: list[float], faces: list[FaceRegion], taken: set[int]) -> int | None:
    best, best_iou = None, IOU_MATCH
    for k, face in enumerate(faces):
        if k in taken or face.box is None:
            continue
        a, b = np.asarray(box, np.float64), face.box
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        iou = inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)
        if iou >= best_iou:
            best, best_iou = k, iou
    return best
