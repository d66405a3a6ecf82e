"""The job's stages, as Ray Data batch callables: fetch+decode (CPU), detect+parse (GPU/CPU actor), encode (CPU).

Batches are dicts of numpy arrays (Ray's "numpy" batch format). Every image keeps flowing
through every stage: a row that failed earlier carries its error_code and a 1x1 placeholder
image, and later stages pass it through untouched, so no input ever disappears. The parse stage
turns image rows into face rows: one per face, or one `no_face` row, and all rows of an image
leave in the same batch.

Row contract between stages:
    manifest      id, key, size, etag
    + decode      image (H,W,3 uint8), width, height, error_code ("" when fine), error
    parse         per face: the image's columns without `image`, plus status, face_index (-1 when
                  none), face_count, face_box (4,), landmarks (10,) (NaN for whole-image),
                  face_score (NaN for whole-image), transform (6,), aligned_size (2,) w,h,
                  label_map (h,w uint8 over the photo region), label_offset (2,) x,y,
                  boxes (6,4) photo bounds, windows (6,8) photo corners, confidences (6,),
                  class_pixels (10,: every class, zeros past the model's), crop_<part> (h,w,3 uint8 from the aligned frame, 0x0 when none)
    encode        the output table (schema.py)
"""

from __future__ import annotations

import io
import os
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
from PIL import Image

from batch_parse.faces.policy import DEFAULT_POLICY, InferencePolicy
from batch_parse.labels import CLASS_NAMES, NUM_CLASSES, PART_NAMES
from batch_parse.output.codec import encode_label_map, encode_png
from batch_parse.output.quality import PARSE_SCORE, parse_scores
from batch_parse.pipeline.decode import DecodeError, decode_image
from batch_parse.pipeline.options import DEFAULT_FETCH_ATTEMPTS, DEFAULT_MAX_BYTES, JobOptions
from batch_parse.output.schema import SHARD_COLUMNS, STATUS_ERROR, STATUS_NO_FACE, STATUS_OK
from batch_parse.storage.fetch import FetchError, fetch_members, fetch_objects
from batch_parse.storage.location import Location
from batch_parse.storage.tables import read_table_images

_PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)
_NO_CROP = np.zeros((0, 0, 3), dtype=np.uint8)


def _object_column(arrays: list[np.ndarray]) -> np.ndarray:
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


def fetch_and_decode(batch: dict[str, np.ndarray], source: Location, max_pixels: int,
                     max_bytes: int = DEFAULT_MAX_BYTES, fetch_attempts: int = DEFAULT_FETCH_ATTEMPTS,
                     source_format: str = "files", image_column: str = "image") -> dict:
    """Manifest rows -> decoded RGB images, or error rows (fetch or decode failures)."""
    keys = [str(k) for k in batch["key"]]
    sizes = [_size(s) for s in batch["size"]]
    shards = _column(batch, "source_shard", len(keys))
    planned = _column(batch, "error_code", len(keys))
    # Refused from the listed size: not a byte of an object above max_bytes is fetched (an unknown
    # size, from an object list without sizes, is capped by fetch itself).
    small = [s is None or s <= max_bytes for s in sizes]
    blobs: list = [FetchError("too_large", f"{k} is {s:,} bytes, above max_bytes={max_bytes:,} (not read)") if not ok else None
                   for k, s, ok in zip(keys, sizes, small)]
    for i, code in enumerate(planned):
        if code:  # planned as an error (a truncated shard, a repeated key): nothing to read
            blobs[i] = FetchError(str(code), str(batch["error"][i]), retry_now=False)
    files = [i for i, b in enumerate(blobs) if b is None and not shards[i]]
    for i, data in zip(files, fetch_objects([keys[i] for i in files], source, max_bytes=max_bytes, attempts=fetch_attempts)):
        blobs[i] = data
    # Images inside shards: one ranged read per shard per batch (rows come sorted by id, and a
    # shard's ids are contiguous and in shard order).
    by_shard: dict[str, list[int]] = {}
    for i, b in enumerate(blobs):
        if b is None:
            by_shard.setdefault(str(shards[i]), []).append(i)
    for shard, rows in by_shard.items():
        if source_format == "parquet":  # rows of a table: its row groups' image column (storage/tables.py)
            fetched = read_table_images(source, shard, str(batch["etag"][rows[0]]), [int(batch["offset"][i]) for i in rows], image_column)
        else:
            fetched = fetch_members(shard, [(int(batch["offset"][i]), sizes[i]) for i in rows], source, attempts=fetch_attempts)
        for i, data in zip(rows, fetched):
            blobs[i] = data if not isinstance(data, FetchError) else FetchError(data.code, f"{keys[i]}: {data.message}", data.retry_now)
    images, codes, errors = [], [], []
    for key, blob in zip(keys, blobs):
        if isinstance(blob, FetchError):
            images.append(_PLACEHOLDER)
            codes.append(blob.code)
            errors.append(blob.message)
            continue
        try:
            images.append(decode_image(blob, max_pixels))
            codes.append("")
            errors.append("")
        except DecodeError as exc:
            images.append(_PLACEHOLDER)
            codes.append(exc.code)
            errors.append(f"{key}: {exc.message}")
    out = dict(batch)
    out["image"] = _object_column(images)
    out["width"] = np.array([0 if c else im.shape[1] for im, c in zip(images, codes)], dtype=np.int32)
    out["height"] = np.array([0 if c else im.shape[0] for im, c in zip(images, codes)], dtype=np.int32)
    out["error_code"] = np.array(codes, dtype=object)
    out["error"] = np.array(errors, dtype=object)
    return out


def _column(batch: dict, name: str, rows: int) -> list:
    """A manifest column as a list (None where the manifest lacks it: one written before it existed)."""
    values = batch.get(name)
    return [None] * rows if values is None else [None if v is None or v != v else v for v in values]


def _size(value) -> int | None:
    """A manifest size as Ray hands it over: an int, or None / NaN when the object list had none."""
    return None if value is None or value != value else int(value)


# Images per model call on CPU actors (FaceParseActor.chunk). Measured on 48 Caltech web photos,
# batch 16, 2 cores shared with other jobs (labelling time, two alternated rounds): whole batches
# 84.6 and 121.1 s, one image per call 102.0 and 131.9 s (9-20% slower); 4 images per call keeps
# the count moving within a batch (4 steps of 16) at a smaller share of that cost (one run, 113.5 s
# under a heavier load than either round, so not a clean figure).
CPU_CHUNK = 4


class FaceParseActor:
    """Holds the detector and the parser (loaded once per actor) and turns image rows into face rows."""

    def __init__(self, model: str, device: str | None, threads: int, policy: InferencePolicy = DEFAULT_POLICY, progress=None):
        policy.check()  # one line naming every bad option, before any weights load
        import torch

        from batch_parse.faces import load_detector
        from batch_parse.model import load_parser

        # Ray sets OMP threads to the actor's CPU reservation; on CPU actors we want the cores
        # the job planned for this actor, on GPU actors a few for the glue code.
        torch.set_num_threads(max(1, threads))
        self.parser = load_parser(model, device=device)
        self.detector = load_detector(policy.detector, device=device) if policy.detects else None
        self.faces = policy.faces
        self.detect_kwargs = policy.detect_kwargs()
        self.progress = progress  # progress.ProgressCounter handle, or None
        # Images per model call: on a GPU the whole batch (batching is its speed), on a CPU CPU_CHUNK,
        # so progress counts images as they finish instead of jumping by a whole batch.
        self.chunk = None if str(device or "cpu").startswith("cuda") else CPU_CHUNK

    def _faces_of(self, images: list[np.ndarray]) -> list[list]:
        """Images -> per image, its FaceResults (empty when no face was found)."""
        if self.detector is None:
            results = self.parser.parse_faces(images, None)
        else:
            found = self.detector.detect(images, **self.detect_kwargs)
            if self.faces == "largest":
                found = [d.largest() for d in found]
            results = self.parser.parse_faces(images, found)
        per_image: list[list] = [[] for _ in images]
        for r in results:
            per_image[r.image_index].append(r)
        return per_image

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        n = len(batch["id"])
        codes, errors = list(batch["error_code"]), list(batch["error"])
        ok = [i for i in range(n) if not codes[i]]
        faces: dict[int, list] = {}
        if self.progress is not None and len(ok) < n:  # decode errors are done already
            self.progress.add.remote(0, n - len(ok), 0)
        step = self.chunk or max(1, len(ok))
        for start in range(0, len(ok), step):
            chunk = ok[start : start + step]
            try:
                faces.update(zip(chunk, self._faces_of([batch["image"][i] for i in chunk])))
            except Exception:  # noqa: BLE001 - one bad batch must not stop the job
                # Retry one by one so a single pathological image cannot fail its neighbours.
                for i in chunk:
                    try:
                        faces[i] = self._faces_of([batch["image"][i]])[0]
                    except Exception as exc:  # noqa: BLE001
                        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                        codes[i] = "model_failed"
                        errors[i] = f"{batch['key'][i]}: model failed: {reason}"
            if self.progress is not None:
                done = [i for i in chunk if i in faces]
                self.progress.add.remote(len(done), len(chunk) - len(done), sum(len(faces[i]) for i in done))
        rows = []
        for i in range(n):
            image_columns = {k: batch[k][i] for k in batch if k not in ("image", "error_code", "error")}
            image_columns.update(error_code=codes[i], error=errors[i])
            if i not in faces:
                rows.append(_empty_face_row(image_columns, STATUS_ERROR))
            elif not faces[i]:
                rows.append(_empty_face_row(image_columns, STATUS_NO_FACE))
            else:
                rows += [_face_row(image_columns, r, len(faces[i])) for r in faces[i]]
        return _columns(rows)


def _face_row(image_columns: dict, r, face_count: int) -> dict:
    corners = r.windows.reshape(len(PART_NAMES), 8)
    bounds = np.concatenate([r.windows.min(1), r.windows.max(1)], axis=1)
    row = {
        **image_columns,
        "status": STATUS_OK,
        "face_index": r.face_index,
        "face_count": face_count,
        "face_box": np.asarray(r.face_box, np.float32),
        "landmarks": _NAN10 if r.landmarks is None else np.asarray(r.landmarks, np.float32).reshape(10),
        "face_score": np.float32(np.nan if r.score is None else r.score),
        "transform": r.alignment.matrix.reshape(6),
        "aligned_size": np.array([r.alignment.width, r.alignment.height], np.int32),
        "label_map": r.label_map,
        "label_offset": np.array(r.label_map_offset, np.int32),
        "boxes": bounds.astype(np.float32),
        "windows": corners.astype(np.float32),
        "confidences": r.confidences,
        # One count per class of labels.CLASS_NAMES (0 past the model's): encode_rows writes the
        # columns the file's schema has (no pixels_skin for a 9-class model).
        "class_pixels": r.class_pixels,
    }
    for p, name in enumerate(PART_NAMES):
        row[f"crop_{name}"] = r.part_crop(p)
    return row


_NAN10 = np.full(10, np.nan, np.float32)


def _empty_face_row(image_columns: dict, status: str) -> dict:
    row = {
        **image_columns,
        "status": status,
        "face_index": -1,
        "face_count": 0,
        "face_box": np.full(4, np.nan, np.float32),
        "landmarks": _NAN10,
        "face_score": np.float32(np.nan),
        "transform": np.full(6, np.nan),
        "aligned_size": np.zeros(2, np.int32),
        "label_map": _NO_MAP,
        "label_offset": np.zeros(2, np.int32),
        "boxes": np.full((len(PART_NAMES), 4), np.nan, np.float32),
        "windows": np.full((len(PART_NAMES), 8), np.nan, np.float32),
        "confidences": np.full(len(PART_NAMES), np.nan, np.float32),
        "class_pixels": np.zeros(NUM_CLASSES, np.int64),
    }
    for name in PART_NAMES:
        row[f"crop_{name}"] = _NO_CROP
    return row


_NO_MAP = np.zeros((0, 0), dtype=np.uint8)
# Columns of variable shape (images) travel as object arrays; the rest stack into ndarrays.
_OBJECT_COLUMNS = {"label_map", *(f"crop_{name}" for name in PART_NAMES)}


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    out = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        if name in _OBJECT_COLUMNS or isinstance(values[0], str) or values[0] is None:
            out[name] = _object_column(values)
        else:
            out[name] = np.stack([np.asarray(v) for v in values])
    return out


def _crop_bytes(crop: np.ndarray, fmt: str, quality: int) -> bytes | None:
    if crop.size == 0:
        return None
    if fmt == "png":
        return encode_png(crop)
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_rows(batch: dict[str, np.ndarray], schema: pa.Schema, model_version: str, crop_format: str, jpeg_quality: int) -> pa.Table:
    """Face rows -> the output table: PNG label maps, encoded crops, one row per face (or per faceless image)."""
    n = len(batch["id"])
    status = [str(s) for s in batch["status"]]
    ok = np.array([s == STATUS_OK for s in status], dtype=bool)
    decoded = np.array([s != STATUS_ERROR for s in status], dtype=bool)
    now = datetime.now(timezone.utc)

    def per_face(values):
        return [v if good else None for good, v in zip(ok, values)]

    columns: dict[str, list | np.ndarray] = {
        "id": batch["id"].astype(np.int64),
        "key": [str(k) for k in batch["key"]],
        "etag": [None if e is None else str(e) for e in batch["etag"]],
        "size": [_size(s) for s in batch["size"]],
        "width": [int(w) if good else None for good, w in zip(decoded, batch["width"])],
        "height": [int(h) if good else None for good, h in zip(decoded, batch["height"])],
        "face_index": per_face(batch["face_index"].astype(int).tolist()),
        "face_count": batch["face_count"].astype(np.int32),
        "status": status,
        "error_code": [None if s != STATUS_ERROR else str(c) for s, c in zip(status, batch["error_code"])],
        "error": [None if s != STATUS_ERROR else str(e) for s, e in zip(status, batch["error"])],
        "face_box": per_face(batch["face_box"].tolist()),
        "landmarks": [v.tolist() if good and not np.isnan(v).any() else None for good, v in zip(ok, batch["landmarks"])],
        "face_score": [float(v) if good and not np.isnan(v) else None for good, v in zip(ok, batch["face_score"])],
        "transform": per_face(batch["transform"].tolist()),
        "aligned_width": per_face(batch["aligned_size"][:, 0].tolist()),
        "aligned_height": per_face(batch["aligned_size"][:, 1].tolist()),
        "label_map": [encode_label_map(m) if good and m.size else None for good, m in zip(ok, batch["label_map"])],
        "label_map_x": per_face(batch["label_offset"][:, 0].tolist()),
        "label_map_y": per_face(batch["label_offset"][:, 1].tolist()),
    }
    for p, name in enumerate(PART_NAMES):
        crops = batch[f"crop_{name}"]
        columns[f"{name}_crop"] = [_crop_bytes(c, crop_format, jpeg_quality) if good else None for good, c in zip(ok, crops)]
        columns[f"{name}_box"] = per_face(batch["boxes"][:, p].tolist())
        columns[f"{name}_window"] = per_face(batch["windows"][:, p].tolist())
        columns[f"{name}_confidence"] = per_face(batch["confidences"][:, p].astype(float).tolist())
    scores = parse_scores(batch["confidences"])
    columns[PARSE_SCORE] = [float(v) if good and not np.isnan(v) else None for good, v in zip(ok, scores)]
    for c, name in enumerate(CLASS_NAMES):
        if f"pixels_{name}" in schema.names:  # the model's classes only (schema.table_schema)
            columns[f"pixels_{name}"] = per_face(batch["class_pixels"][:, c].astype(int).tolist())
    for name in SHARD_COLUMNS:
        if name in schema.names:  # sources of shards or tables only (schema.table_schema)
            columns[name] = [None if v is None or v != v else str(v) for v in batch[name]]
    columns["model_version"] = [model_version] * n
    columns["processed_at"] = [now] * n
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)


def actor_threads(options: JobOptions, uses_gpu: bool) -> int:
    """Torch threads per actor: its CPU share on a CPU-only node, a couple on GPU actors."""
    if uses_gpu:
        return max(1, int(options.cpus_per_actor))
    cores = os.cpu_count() or 1
    return max(int(options.cpus_per_actor), cores // max(1, options.max_actors))
