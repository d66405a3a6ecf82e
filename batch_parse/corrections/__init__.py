"""`batch-parse import`: labels corrected in Label Studio or CVAT, back as batch-parse rows.

    batch-parse import export.json corrected/ --from labelstudio --original labels/
    batch-parse import task.zip corrected/ --from cvat --original labels/ --helen corrected-helen/

Reads the tool's export of the reviewed labels (labelstudio.py, cvat.py) and the output they were
exported from (ORIGINAL, for every row's other columns and each face's region), splits each
corrected photo's class map back into its faces (split.py) and writes OUT in the output's own
layout: OUT/data/corrections.parquet, one row per face of every reviewed photo, the original
row's columns with the human's label_map and pixels_<class>, and the columns of
output/schema.CORRECTION_FIELDS (label_source = human, corrected_by, corrected_at,
changed_pixels, corrected_in). Rows join the original ones by (id, face_index). With --helen DIR
every corrected face is also written in the Helen layout `batch-parse train` reads (helen.py).

Nothing is written unless everything read: OUT (and DIR) are built beside their place and moved
in at the end, and any problem with the input is one ValueError line.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from batch_parse.corrections.split import FaceRegion, split_photo
from batch_parse.output.codec import decode_label_map, encode_label_map
from batch_parse.output.layout import DATA_DIR, STATE_DIR
from batch_parse.storage.location import Location
from batch_parse.output.schema import (
    COLUMN_DOCS,
    CORRECTION_FIELDS,
    LABEL_SOURCE_HUMAN,
    METADATA_KEY,
    STATUS_ERROR,
    STATUS_NO_FACE,
    STATUS_OK,
    model_version_of,
)

TOOLS = ("labelstudio", "cvat")
DATA_FILE = "corrections.parquet"
SUMMARY_FILE = "import.json"  # OUT/.batch-parse/import.json: what was imported from where
BOX_TOLERANCE = 0.5  # px: a drawn box this close to the detector's (clipped to the image) is unchanged


@dataclass
class ImportResult:
    tool: str
    out: Path
    images: int = 0
    faces: int = 0
    faces_changed: int = 0
    pixels_changed: int = 0
    boxes_moved: int = 0
    not_reviewed: int = 0  # Label Studio tasks without a submitted annotation
    left_out_pixels: int = 0
    unmatched_boxes: int = 0
    helen: Path | None = None
    helen_faces: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [(f"imported {self.images} image(s), {self.faces} face(s) from {self.tool} to {self.out}: "
                  f"{self.faces_changed} face(s) corrected ({self.pixels_changed:,} pixel(s) changed), "
                  f"{self.faces - self.faces_changed} as labelled")]  # fmt: skip
        if self.boxes_moved:
            lines.append(f"{self.boxes_moved} face box(es) moved")
        if self.helen is not None:
            lines.append(f"wrote {self.helen_faces} aligned face(s) in the Helen layout to {self.helen} (batch-parse train DATA)")
        lines += [f"  {self.out / DATA_DIR / DATA_FILE}"]
        lines += [f"note: {n}" for n in self.notes]
        return lines

    def summary(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def import_corrections(src: str | os.PathLike, out: str | os.PathLike, tool: str, original: str | Location, *,
                       helen: str | os.PathLike | None = None, skip_unknown_labels: bool = False) -> ImportResult:
    """Import the corrected labels in `src` (a `tool` export) of the output `original` into the new folder `out`.

    A label the original's model lacks (`skin` painted on a 9-class output) is refused in one line
    naming the task, before any row is read; skip_unknown_labels leaves those regions out instead."""
    from batch_parse.output.dataset import open_output

    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}: one of {', '.join(TOOLS)}")
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise ValueError(f"{src} is not a file: give the {'JSON' if tool == 'labelstudio' else 'zip'} the tool exported")
    targets = [out] + ([Path(helen)] if helen is not None else [])
    for target in targets:
        if str(target).startswith("s3://"):
            raise ValueError(f"{target} must be a local folder")
        _refuse_inside(target, original)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ValueError(f"{target} exists and is not an empty folder: import into a new one")
    faces = open_output(original)
    original = original.uri if isinstance(original, Location) else original  # as messages and the summary name it
    versions = sorted({model_version_of(f.metadata) for f in faces.output.files})
    if len(versions) > 1:
        raise ValueError(f"{original} holds {len(versions)} model versions ({', '.join(versions)}): give the folder of the one exported")
    class_names = faces.class_names
    result = ImportResult(tool=tool, out=out, helen=Path(helen) if helen is not None else None)

    # 1. What the tool says, per photo id: (where, drawn(photo rows) -> (classes, hint, boxes), who, when).
    if tool == "labelstudio":
        from batch_parse.corrections import labelstudio

        tasks, result.not_reviewed = labelstudio.read_tasks(src)
        if not tasks:
            raise ValueError(f"{src}: no task has a submitted annotation (tasks.json as exported holds predictions only: "
                             "review in Label Studio, then Export > JSON)")
        _check_labels(labelstudio.unknown_labels(tasks, class_names), src, versions, class_names, skip_unknown_labels,
                      result, "region(s)")
        wanted = {}
        for task in tasks:
            if task.id in wanted:
                raise ValueError(f"{src}: {wanted[task.id].where} and {task.where} are the same image (batch_parse_id {task.id})")
            wanted[task.id] = task
        rows = _rows(faces, list(wanted))
        for task in tasks:
            if task.id not in rows:
                raise ValueError(f"{src}: {task.where} (key {task.key!r}) names image {task.id}, which {original} does not hold")
            first = rows[task.id][0]
            if task.key is not None and task.key != first["key"]:
                raise ValueError(f"{src}: {task.where} is key {task.key!r}, image {task.id} of {original} is {first['key']!r}")
    else:
        from batch_parse.corrections import cvat

        items, colours = cvat.read_archive(src, class_names)
        _check_labels(cvat.unknown_labels(items, colours), src, versions, class_names, skip_unknown_labels, result, "pixel(s)")
        by_name = _names(faces)
        ids = {}
        for item in items:
            image_id = by_name.get(item.name)
            if image_id is None:
                raise ValueError(f"{src}: {item.where} matches no image of {original} (items are named by key without extension)")
            if image_id in ids:
                raise ValueError(f"{src}: {ids[image_id].where} and {item.where} are the same image")
            ids[image_id] = item
        rows = _rows(faces, list(ids))

    # 2. Every photo split back into its faces, all in memory before anything is written.
    built: list[dict] = []
    photos = list(wanted.values()) if tool == "labelstudio" else list(ids.items())
    from batch_parse.report.meter import Meter

    meter = Meter(len(photos), "importing", unit="images", quiet_for=2.0)  # shown only when it takes a while
    for done, entry in enumerate(photos):
        meter.set(done)
        image_id = entry.id if tool == "labelstudio" else entry[0]
        photo_rows = rows[image_id]
        first = photo_rows[0]
        width, height = first["width"], first["height"]
        regions = [_region(r) for r in photo_rows if r["status"] == STATUS_OK]
        if tool == "labelstudio":
            drawn = labelstudio.drawn(entry, width, height, regions, class_names, skip_unknown_labels)
            classes, hint, boxes, who, when = drawn.classes, drawn.hint, drawn.boxes, entry.corrected_by, entry.corrected_at
            result.unmatched_boxes += drawn.unmatched_boxes
        else:
            classes, hint, boxes, who, when = cvat.classes(entry[1], colours, width, height, skip_unknown_labels), None, {}, None, None
        if not regions:  # a no_face image: confirmed as such; anything drawn has no face row to go to
            result.left_out_pixels += int((classes != 0).sum())
            built.append(_mark(dict(first), tool, who, when, 0))
            result.images += 1
            continue
        split = split_photo(regions, classes, hint)
        result.left_out_pixels += split.left_out
        for k, (row, region) in enumerate(zip(photo_rows, regions)):
            row = dict(row)
            if split.changed[k]:
                row["label_map"] = encode_label_map(split.maps[k])
                for c, count in enumerate(np.bincount(split.maps[k].ravel(), minlength=len(class_names))[: len(class_names)]):
                    row[f"pixels_{class_names[c]}"] = int(count)
                result.faces_changed += 1
                result.pixels_changed += split.changed[k]
            if k in boxes and _moved(boxes[k], region.box, width, height):
                row["face_box"] = [float(v) for v in boxes[k]]
                result.boxes_moved += 1
            built.append(_mark(row, tool, who, when, split.changed[k]))
            result.faces += 1
        result.images += 1
    meter.close(len(photos))
    if result.not_reviewed:
        result.notes.append(f"{result.not_reviewed} task(s) without a submitted annotation were not reviewed: left out")
    if result.left_out_pixels:
        result.notes.append(f"{result.left_out_pixels:,} painted pixel(s) lie outside every face's region and have no row "
                            "to go to: left out (a face the detector missed cannot be added by import)")
    if result.unmatched_boxes:
        result.notes.append(f"{result.unmatched_boxes} drawn face box(es) match no detected face: left out")

    # 3. Written beside OUT (and DIR) and moved into place once complete.
    schema = _schema(faces.dataset.schema, src, original, tool)
    staged = _staging(out)
    staged_helen = _staging(Path(helen)) if helen is not None else None
    try:
        (staged / DATA_DIR).mkdir(parents=True)
        table = pa.Table.from_pylist(built, schema=schema)
        pq.write_table(table, staged / DATA_DIR / DATA_FILE)
        if staged_helen is not None:
            from batch_parse.corrections.helen import write_helen

            result.helen_faces = write_helen(staged_helen, table, faces.metadata, faces.output.location)
        (staged / STATE_DIR).mkdir()
        (staged / STATE_DIR / SUMMARY_FILE).write_text(json.dumps({"src": str(src), "original": original, **result.summary()}, indent=1))
        for target, built_dir in ((out, staged), (Path(helen) if helen is not None else None, staged_helen)):
            if target is not None:
                if target.exists():
                    target.rmdir()  # empty, checked above
                os.replace(built_dir, target)
    except BaseException:
        for path in (staged, staged_helen):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        if out.exists() and helen is not None and not Path(helen).exists():
            shutil.rmtree(out, ignore_errors=True)  # the second move failed: neither stays
        raise
    return result


def _refuse_inside(target: Path, original: str | Location) -> None:
    """Corrections never go inside the output they correct: a run would read them as its own rows
    (and remove the human rows as duplicates of the model's), and readers of the output would see
    every reviewed face twice. Their place is a folder of their own (README: exactly-once)."""
    if isinstance(original, Location):
        if original.is_s3:
            return  # OUT is local (checked above): it cannot be inside an S3 output
        original = original.path
    if original.startswith("s3://"):
        return
    root = Path(original).resolve()
    if root.name == DATA_DIR and (root.parent / STATE_DIR).is_dir():
        root = root.parent  # ORIGINAL given as its data/ folder: the output is the folder above
    where = target.resolve()
    if where == root or root in where.parents:
        raise ValueError(f"{target} is inside the output {original}: a run would take the corrections for its own rows "
                         f"and readers would see every reviewed face twice; import into a folder outside it "
                         f"(e.g. {root.parent / (root.name + '-corrected')})")


def _check_labels(unknown: list[tuple], src: Path, versions: list[str], class_names: list[str], skip: bool,
                  result: ImportResult, unit: str) -> None:
    """Refuse (one line, naming the first task or item) or note labels the original's model lacks."""
    if not unknown:
        return
    labels = sorted({label for _, label, _ in unknown})
    first, label, _ = unknown[0]
    where = f"{first.where}" + (f" (key {first.key!r})" if getattr(first, "key", None) else "")
    model = versions[0] if versions else "the original's model"
    if not skip:
        raise ValueError(f"{src}: {where} paints {label!r}, a class {model} does not label (its classes: "
                         f"{', '.join(class_names[1:])}); {len({id(u[0]) for u in unknown})} task(s) use {', '.join(map(repr, labels))}: "
                         "remove those regions in the tool, or import with --skip-unknown-labels to leave them out")
    result.notes.append(f"left out {sum(n for _, _, n in unknown):,} {unit} labelled {', '.join(map(repr, labels))} in "
                        f"{len({id(u[0]) for u in unknown})} task(s): not a class of {model}")


def _staging(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent / f".{target.name}.importing-{os.getpid()}"


def _rows(faces, ids: list[int]) -> dict[int, list[dict]]:
    """The original rows of these images, grouped by id, face_index order."""
    table = faces.dataset.to_table(filter=pads.field("id").isin(pa.array(ids, pa.int64())))
    grouped: dict[int, list[dict]] = defaultdict(list)
    for row in table.to_pylist():
        grouped[row["id"]].append(row)
    for image_id, group in grouped.items():
        if any(r["status"] == STATUS_ERROR for r in group):
            raise ValueError(f"image {image_id} ({group[0]['key']}) is an error row in the original output: it has no labels to correct")
        group.sort(key=lambda r: -1 if r["face_index"] is None else r["face_index"])
        complete = group[0]["status"] == STATUS_NO_FACE or len(group) == group[0]["face_count"]
        if not complete:
            raise ValueError(f"image {image_id} ({group[0]['key']}) has {len(group)} of its {group[0]['face_count']} face rows "
                             "in the original output")
    return grouped


def _names(faces) -> dict[str, int]:
    """CVAT item name -> image id, for every image of the original (both names the cvat export gives)."""
    from batch_parse.export.faces import copied_name, safe_relative

    table = faces.dataset.to_table(columns=["id", "key", "status"], filter=pads.field("status") != STATUS_ERROR)
    names: dict[str, int] = {}
    for image_id, key in zip(table["id"].to_pylist(), table["key"].to_pylist()):
        for name in {os.path.splitext(safe_relative(key))[0], os.path.splitext(copied_name(key))[0]}:
            names.setdefault(name, image_id)
    return names


def _region(row: dict) -> FaceRegion:
    box = row["face_box"]
    return FaceRegion(row["face_index"], decode_label_map(row["label_map"]), row["label_map_x"], row["label_map_y"],
                      None if box is None else np.asarray(box, np.float64))  # fmt: skip


def _moved(drawn: list[float], box: np.ndarray | None, width: int, height: int) -> bool:
    if box is None:
        return True
    clipped = np.clip(box, 0, [width, height, width, height])
    return bool(np.abs(np.asarray(drawn, np.float64) - clipped).max() > BOX_TOLERANCE)


def _mark(row: dict, tool: str, who: str | None, when: datetime | None, changed: int) -> dict:
    row.update(label_source=LABEL_SOURCE_HUMAN, corrected_by=who, corrected_at=when, changed_pixels=changed, corrected_in=tool)
    return row


def _schema(original: pa.Schema, src: Path, dst: str, tool: str) -> pa.Schema:
    meta = json.loads((original.metadata or {})[METADATA_KEY])
    meta.update(label_source=LABEL_SOURCE_HUMAN, corrected_in=tool, corrected_from=str(src), original_output=dst,
                imported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), columns=COLUMN_DOCS)
    ours = {f.name for f in CORRECTION_FIELDS}  # an imported set as ORIGINAL (a second review round): replaced
    schema = pa.schema([*(f for f in original.remove_metadata() if f.name not in ours), *CORRECTION_FIELDS])
    return schema.with_metadata({METADATA_KEY: json.dumps(meta).encode()})


__all__ = ["TOOLS", "ImportResult", "import_corrections"]
