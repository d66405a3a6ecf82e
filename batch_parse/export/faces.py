"""Reads a job's output photo by photo for the exporters: its faces together, their label maps placed in it.

The output has one row per face, and an image's faces may sit in two files (a block boundary),
so rows are streamed a small batch at a time and a photo is handed on once all its rows have
been seen (`face_count` says how many). Only rows the `--where` filter keeps become faces; error
rows are never exported (they have no labels). Memory: one batch, plus the photos still waiting
for the rest of their rows.
"""

from __future__ import annotations

import io
import itertools
import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from batch_parse.export import IMAGES_DIR
from batch_parse.export.where import Where
from batch_parse.labels import BACKGROUND, NUM_CLASSES, PAINT_ORDER
from batch_parse.output.codec import add_face, decode_label_map
from batch_parse.output.quality import (
    CONFIDENCE_COLUMNS,
    face_size,
    parse_score,
    parts_found,
)
from batch_parse.output.reader import Output, OutputFile, derive_columns, source_columns
from batch_parse.output.schema import STATUS_ERROR, STATUS_NO_FACE, STATUS_OK
from batch_parse.pipeline.decode import DecodeError, decode_image
from batch_parse.pipeline.options import DEFAULT_MAX_PIXELS
from batch_parse.storage.fetch import FetchError
from batch_parse.storage.location import Location, parse_location
from batch_parse.storage.originals import fetch_original
from batch_parse.storage.s3 import StorageError, describe_error

PHOTO_COLUMNS = ("id", "key", "size", "status", "width", "height", "face_index", "face_count", "model_version")
FACE_COLUMNS = ("face_box", "landmarks", "face_score", "label_map", "label_map_x", "label_map_y", *CONFIDENCE_COLUMNS)
# Rows per read: label maps and crops are a few kB each, so a batch stays a few MB.
BATCH_ROWS = 256
EXIF_ORIENTATION = 0x0112


@dataclass
class Face:
    """One face row: where the detector found it and its label map (the face's region of the photo)."""

    index: int  # face_index
    score: float | None
    box: np.ndarray | None  # [x0, y0, x1, y1], original pixels
    landmarks: np.ndarray | None  # (5, 2) [x, y], original pixels
    label_map: np.ndarray  # (h, w) uint8 class indices, placed at (x, y) in the photo
    x: int
    y: int
    columns: dict = field(default_factory=dict)  # the other columns an exporter asked for (crops, boxes)
    confidences: tuple[float | None, ...] = ()  # <part>_confidence in PART_NAMES order

    @property
    def parse_score(self) -> float | None:
        """The face's parse score (output/quality.py: mean part confidence, a part not found counting 0)."""
        return parse_score(self.confidences) if self.confidences else None

    @property
    def parts_found(self) -> int:
        return parts_found(self.confidences)

    @property
    def size(self) -> float | None:
        """The shorter side of the face box, in pixels."""
        return face_size(self.box)

    def part_confidence(self, part: int | None) -> float | None:
        """The confidence of part `part` (labels.CLASS_PART of a class); None for classes no part
        window parses (skin comes from stage 1) and for rows without confidences."""
        return self.confidences[part] if self.confidences and part is not None else None


@dataclass
class Photo:
    """One image of the output with its selected faces (face_index order); no faces for a no_face image."""

    id: int
    key: str
    width: int
    height: int
    status: str  # ok or no_face
    model_version: str
    source: str | None  # where the job read the image (file metadata), None if not recorded
    metadata: dict = field(repr=False)  # its file's metadata: how to fetch the original (storage/originals.py)
    faces: list[Face] = field(default_factory=list)
    size: int | None = None  # bytes of the source object at listing time
    _maps: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def label_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """(label_map, owner): the photo's (height, width) class map, the union of its faces, and per
        pixel the position in `faces` of the face that class came from (-1 for background).

        Faces go in face_index order (largest first) and a later face only fills pixels the earlier
        ones left as background, as `batch-parse eval` scores a photo.
        """
        if self._maps is None:
            label_map = np.zeros((self.height, self.width), np.uint8)
            owner = np.full((self.height, self.width), -1, np.int16)
            for position, face in enumerate(self.faces):
                where, filled = add_face(label_map, face.label_map, face.x, face.y)
                owner[where][filled] = position
            self._maps = label_map, owner
        return self._maps

    def parts(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(position in faces, class, (height, width) bool mask) for every class present in every face,
        a face's classes in labels.PAINT_ORDER (skin before the parts): the instances of COCO, CVAT's
        SegmentationObject and Label Studio; disjoint, their union is label_maps()[0]."""
        label_map, owner = self.label_maps()
        for position in range(len(self.faces)):
            mine = owner == position
            present = np.bincount(label_map[mine], minlength=NUM_CLASSES)
            for cls in PAINT_ORDER:
                if present[cls]:
                    yield position, cls, mine & (label_map == cls)

    def face_mask(self, position: int) -> np.ndarray:
        """(height, width) bool: the pixels of the union that belong to faces[position] (all its parts)."""
        label_map, owner = self.label_maps()
        return (owner == position) & (label_map != BACKGROUND)

    def parse_scores(self) -> list[float]:
        """The parse scores of the faces that have one."""
        return [f.parse_score for f in self.faces if f.parse_score is not None]

    def uri(self) -> str:
        """The original image: an s3:// URI or an absolute local path (the key alone if the source is unknown)."""
        if not self.source:
            return self.key
        location = parse_location(self.source)
        return f"s3://{location.bucket}/{self.key}" if location.is_s3 else location.join(self.key)


def iter_photos(output: Output, where: Where | None = None, limit: int | None = None,
                columns: Sequence[str] = (), progress=None, incomplete: list[Photo] | None = None) -> Iterator[Photo]:
    """The output's complete photos with at least one face (or a no_face row) that `where` keeps, at most `limit`.

    columns: extra columns to read for each face, in Face.columns (raw values: crops stay bytes).
    progress(rows_read): called after every batch.
    incomplete: receives the photos with only some of their rows in the output (a torn output: the
    next run redoes them), which are never yielded: a 4-face photo is not exported as a 3-face one.
    """
    wanted = list(dict.fromkeys((*PHOTO_COLUMNS, *FACE_COLUMNS, *columns, *(where.columns if where else ()))))
    photos = _assembled_photos(output, wanted, where, columns, progress, incomplete if incomplete is not None else [])
    exportable = (photo for photo in photos if _exportable(photo))
    for photo in itertools.islice(exportable, limit):
        photo.faces.sort(key=lambda f: f.index)
        yield photo


def _assembled_photos(output: Output, wanted: list[str], where: Where | None, columns: Sequence[str],
                      progress, incomplete: list[Photo]) -> Iterator[Photo]:
    """Every photo once all its rows are read (faces may span files); those with rows missing go to `incomplete`."""
    pending: dict[int, tuple[Photo, int]] = {}  # id -> (photo so far, rows of it still to come)
    for file in output.files:
        for batch in _file_batches(output, file, wanted):
            keep = _keep(batch, where)
            records = batch.to_pylist()
            for record, kept in zip(records, keep):
                photo, missing = pending.pop(record["id"], (None, max(record["face_count"], 1)))
                if photo is None:
                    photo = _photo(record, file)
                if kept and record["status"] == STATUS_OK:
                    photo.faces.append(_face(record, columns, output.relative(file.path)))
                elif kept and record["status"] == STATUS_NO_FACE:
                    photo.status = STATUS_NO_FACE
                missing -= 1
                if missing > 0:
                    pending[record["id"]] = (photo, missing)
                else:
                    yield photo
            if progress is not None:
                progress(batch.num_rows)
    # Images with rows missing (a torn output the job will redo): said, never exported in part.
    incomplete.extend(photo for photo, _ in pending.values())


def _file_batches(output: Output, file: OutputFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    name = output.relative(file.path)
    try:
        with output.filesystem.open_input_file(file.path) as stream:
            parquet = pq.ParquetFile(stream)
            required = source_columns(parquet.schema_arrow.names, columns)  # parse_score of older files: computed
            missing = [c for c in required if c not in parquet.schema_arrow.names]
            if missing:
                raise ValueError(f"{name}: column(s) {', '.join(missing)} missing: written by an incompatible batch-parse version?")
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=required):
                yield derive_columns(batch, columns)
    except OSError as exc:
        raise StorageError(f"cannot read {name}: {describe_error(exc, output.location)}") from exc


def _keep(batch: pa.RecordBatch, where: Where | None) -> np.ndarray:
    status = batch.column("status").to_numpy(zero_copy_only=False)
    keep = status != STATUS_ERROR
    return keep & where.mask(batch) if where is not None else keep


def _photo(record: dict, file: OutputFile) -> Photo:
    return Photo(id=record["id"], key=record["key"], width=record["width"], height=record["height"],
                 status=STATUS_OK, model_version=record["model_version"], source=file.metadata.get("source"),
                 metadata=file.metadata, size=record["size"])  # fmt: skip


def _exportable(photo: Photo) -> bool:
    return bool(photo.faces) or photo.status == STATUS_NO_FACE


def _face(record: dict, columns: Sequence[str], file_name: str) -> Face:
    try:
        label_map = decode_label_map(record["label_map"])
    except ValueError as exc:
        raise ValueError(f"{file_name}: unreadable label map for {record['key']} face {record['face_index']}: {exc}") from exc
    box, landmarks = record["face_box"], record["landmarks"]
    return Face(
        index=record["face_index"],
        score=record["face_score"],
        box=None if box is None else np.asarray(box, np.float64),
        landmarks=None if landmarks is None else np.asarray(landmarks, np.float64).reshape(5, 2),
        label_map=label_map,
        x=record["label_map_x"],
        y=record["label_map_y"],
        columns={c: record[c] for c in columns},
        confidences=tuple(record[c] for c in CONFIDENCE_COLUMNS),
    )


class Originals:
    """Copies photos' original images next to an export (`--copy-images`), upright.

    The label maps are in the image's pixels after EXIF orientation. Bytes are copied as they are,
    except for images with an EXIF rotation, which are written upright (re-encoded) so every tool,
    whether it honours EXIF or not, shows the masks where they belong.
    """

    def __init__(self, output: Location | None = None):
        self.output = output  # the output read: older files reached their source at its endpoint

    def read(self, photo: Photo) -> bytes:
        """The image as the export should hold it; ValueError saying why when it cannot be read."""
        if not photo.source:
            raise ValueError(f"{photo.key}: the output does not record where the images were read from: export without --copy-images")
        data = fetch_original(photo.metadata, photo.key, self.output)
        if isinstance(data, FetchError):
            raise ValueError(f"cannot copy {photo.key}: {data.message}")
        return upright(data, photo.key)

    def copy(self, photo: Photo, out: str | os.PathLike) -> str:
        """Write the image to out/images/<copied_name(key)>; returns that path relative to out.

        Never overwrites: two keys whose copies this filesystem cannot tell apart (one that ignores
        case, or a key that is another's folder) stop the export in one line, not one copy lost.
        """
        relative = f"{IMAGES_DIR}/{copied_name(photo.key)}"
        data = self.read(photo)
        try:
            write_file(out, relative, data, exclusive=True)
        except OSError as exc:  # FileExistsError, NotADirectoryError, IsADirectoryError, a name too long, ...
            raise ValueError(f"cannot copy {photo.key} to {relative}: {exc.strerror or exc} (another key's copy holds that "
                             "name on this filesystem: export them apart with --where key ...)") from None
        return relative


def upright(data: bytes, key: str) -> bytes:
    """`data` itself, or for an EXIF-rotated image the upright pixels re-encoded in the same format."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            fmt = image.format
    except Exception:  # noqa: BLE001 - the tool will say what it thinks of it; we copy as is
        return data
    if orientation in (None, 1):
        return data
    try:
        pixels = decode_image(data, DEFAULT_MAX_PIXELS)
    except DecodeError as exc:
        raise ValueError(f"cannot copy {key}: {exc.message}") from exc
    buffer = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    else:
        Image.fromarray(pixels).save(buffer, fmt if fmt in ("PNG", "WEBP", "TIFF") else "PNG")
    return buffer.getvalue()


# --copy-images names: every key gets its own file, and the key can be read back from the name.
# '%' and '\\' (and control characters) are written %XX, as the listing writes undecodable bytes
# (storage/listing.py), so `a\\b.jpg` and `a/b.jpg` are two files; path segments a filesystem cannot
# hold as they are (`.`, `..`, the empty ones of `a//b.jpg` or `/a.jpg`) are escaped too (`%2E`,
# a `%2F` for each extra '/'). original_key() undoes it: unquote each segment, join with '/'.
_COPY_ESCAPED = frozenset("%\\") | {chr(c) for c in (*range(0x20), 0x7F)}


def copied_name(key: str) -> str:
    """The path (relative, '/'-separated) under OUT/images where --copy-images writes `key`'s image."""
    segments, slashes = [], ""
    parts = key.split("/")
    if parts[-1] in ("", ".", ".."):
        raise ValueError(f"key {key!r} does not name a file")
    for part in parts:
        if part == "":
            slashes += "%2F"  # carried into the next segment: the folder a//b would otherwise vanish
            continue
        escaped = "".join(f"%{ord(c):02X}" if c in _COPY_ESCAPED else c for c in part)
        if escaped in (".", ".."):
            escaped = "%2E" * len(escaped)
        segments.append(slashes + escaped)
        slashes = ""
    return "/".join(segments)


def original_key(name: str) -> str:
    """The key whose copy is `name` (a path copied_name made): its inverse."""
    return "/".join(unquote(segment) for segment in name.split("/"))


def safe_relative(key: str) -> str:
    """A key as a relative path inside an export folder: no leading '/', no '..' or '.' segments."""
    parts = [p for p in posixpath.normpath(key.replace("\\", "/")).split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ValueError(f"key {key!r} does not name a file")
    return "/".join(parts)


def write_file(root: str | os.PathLike, relative: str, data: bytes, exclusive: bool = False) -> str:
    """Write `data` to root/relative (folders made); returns the absolute path. exclusive: FileExistsError if it exists."""
    path = os.path.join(os.fspath(root), *relative.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "xb" if exclusive else "wb") as f:
        f.write(data)
    return os.path.abspath(path)
