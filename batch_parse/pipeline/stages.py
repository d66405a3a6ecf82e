"""The job's three stages, as Ray Data batch callables: fetch+decode (CPU), parse (GPU/CPU actor), encode (CPU).

Batches are dicts of numpy arrays (Ray's "numpy" batch format). Every row keeps flowing
through every stage: a row that failed earlier carries its error_code and a 1x1 placeholder
image, and later stages pass it through untouched, so no input ever disappears.

Row contract between stages:
    manifest      id, key, size, etag
    + decode      image (H,W,3 uint8), width, height, error_code ("" when fine), error
    + parse       label_map (H,W uint8), boxes (6,4), confidences (6,), class_pixels (9,),
                  crop_<part> (h,w,3 uint8, 0x0 when the window is off the image)
    encode        the output table (schema.py)
"""

from __future__ import annotations

import io
import os
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
from PIL import Image

from batch_parse.labels import CLASS_NAMES, PART_NAMES
from batch_parse.pipeline.decode import DecodeError, decode_image
from batch_parse.pipeline.options import DEFAULT_MAX_BYTES, JobOptions
from batch_parse.pipeline.schema import STATUS_ERROR, STATUS_OK
from batch_parse.storage.fetch import FetchError, fetch_objects
from batch_parse.storage.location import parse_location

_PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)
_NO_CROP = np.zeros((0, 0, 3), dtype=np.uint8)


def _object_column(arrays: list[np.ndarray]) -> np.ndarray:
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


def fetch_and_decode(batch: dict[str, np.ndarray], source: str, endpoint_url: str | None, max_pixels: int,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Manifest rows -> decoded RGB images, or error rows (fetch or decode failures)."""
    keys = [str(k) for k in batch["key"]]
    sizes = [int(s) for s in batch["size"]]
    # Refused from the listed size: not a byte of an object above max_bytes is fetched.
    fetched = iter(fetch_objects([k for k, s in zip(keys, sizes) if s <= max_bytes], parse_location(source), endpoint_url,
                                 max_bytes=max_bytes))
    blobs = [next(fetched) if s <= max_bytes else FetchError("too_large", f"{k} is {s:,} bytes, above max_bytes={max_bytes:,} (not read)")
             for k, s in zip(keys, sizes)]
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


class ParseActor:
    """Holds the model (loaded once per actor) and labels the decodable rows of each batch."""

    def __init__(self, model: str, device: str | None, threads: int, progress=None):
        import torch

        from batch_parse.model import load_parser

        # Ray sets OMP threads to the actor's CPU reservation; on CPU actors we want the cores
        # the job planned for this actor, on GPU actors a few for the glue code.
        torch.set_num_threads(max(1, threads))
        self.parser = load_parser(model, device=device)
        self.progress = progress  # progress.ProgressCounter handle, or None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        n = len(batch["id"])
        # Writable copies: Ray may hand batches over as read-only, zero-copy arrays.
        batch = {**batch, "error_code": np.array(batch["error_code"], dtype=object), "error": np.array(batch["error"], dtype=object)}
        ok = [i for i in range(n) if not batch["error_code"][i]]
        results = {}
        if ok:
            try:
                results = dict(zip(ok, self.parser.parse([batch["image"][i] for i in ok])))
            except Exception:  # noqa: BLE001 - one bad batch must not stop the job
                # Retry one by one so a single pathological image cannot fail its neighbours.
                for i in ok:
                    try:
                        results[i] = self.parser.parse([batch["image"][i]])[0]
                    except Exception as exc:  # noqa: BLE001
                        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                        batch["error_code"][i] = "model_failed"
                        batch["error"][i] = f"{batch['key'][i]}: model failed: {reason}"
        if self.progress is not None:
            self.progress.add.remote(len(results), n - len(results))
        out = {k: v for k, v in batch.items() if k != "image"}
        empty_map = np.zeros((0, 0), dtype=np.uint8)
        out["label_map"] = _object_column([results[i].label_map if i in results else empty_map for i in range(n)])
        out["boxes"] = np.stack([results[i].boxes if i in results else np.full((6, 4), np.nan, np.float32) for i in range(n)])
        out["confidences"] = np.stack([results[i].confidences if i in results else np.full(6, np.nan, np.float32) for i in range(n)])
        out["class_pixels"] = np.stack([results[i].class_pixels if i in results else np.zeros(len(CLASS_NAMES), np.int64) for i in range(n)])
        for p, name in enumerate(PART_NAMES):
            out[f"crop_{name}"] = _object_column(
                [part_crop(batch["image"][i], results[i].boxes[p]) if i in results else _NO_CROP for i in range(n)]
            )
        return out


def part_crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The part's window cut from the original image at full resolution (clipped to the image)."""
    h, w = image.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2])) + 1), min(h, int(np.ceil(box[3])) + 1)
    if x1 <= x0 or y1 <= y0:
        return _NO_CROP
    return image[y0:y1, x0:x1]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Level 1: label maps are mostly one value and compress well anyway; speed matters more.
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _crop_bytes(crop: np.ndarray, fmt: str, quality: int) -> bytes | None:
    if crop.size == 0:
        return None
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(crop).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(crop).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_rows(batch: dict[str, np.ndarray], schema: pa.Schema, model_version: str, crop_format: str, jpeg_quality: int) -> pa.Table:
    """Parsed rows -> the output table: PNG label maps, encoded crops, one row per input."""
    n = len(batch["id"])
    ok = np.array([not c for c in batch["error_code"]], dtype=bool)
    now = datetime.now(timezone.utc)
    columns: dict[str, list | np.ndarray] = {
        "id": batch["id"].astype(np.int64),
        "key": [str(k) for k in batch["key"]],
        "etag": [None if e is None else str(e) for e in batch["etag"]],
        "size": batch["size"].astype(np.int64),
        "width": [int(w) if w else None for w in batch["width"]],
        "height": [int(h) if h else None for h in batch["height"]],
        "status": [STATUS_OK if good else STATUS_ERROR for good in ok],
        "error_code": [None if good else str(c) for good, c in zip(ok, batch["error_code"])],
        "error": [None if good else str(e) for good, e in zip(ok, batch["error"])],
        "label_map": [_png(m) if good else None for good, m in zip(ok, batch["label_map"])],
    }
    for p, name in enumerate(PART_NAMES):
        crops = batch[f"crop_{name}"]
        columns[f"{name}_crop"] = [_crop_bytes(c, crop_format, jpeg_quality) if good else None for good, c in zip(ok, crops)]
        columns[f"{name}_box"] = [batch["boxes"][i, p].tolist() if ok[i] else None for i in range(n)]
        columns[f"{name}_confidence"] = [float(batch["confidences"][i, p]) if ok[i] else None for i in range(n)]
    for c, name in enumerate(CLASS_NAMES):
        columns[f"pixels_{name}"] = [int(batch["class_pixels"][i, c]) if ok[i] else None for i in range(n)]
    columns["model_version"] = [model_version] * n
    columns["processed_at"] = [now] * n
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)


def actor_threads(options: JobOptions, uses_gpu: bool) -> int:
    """Torch threads per actor: its CPU share on a CPU-only node, a couple on GPU actors."""
    if uses_gpu:
        return max(1, int(options.cpus_per_actor))
    cores = os.cpu_count() or 1
    return max(int(options.cpus_per_actor), cores // max(1, options.max_actors))
