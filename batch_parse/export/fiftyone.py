"""FiftyOne: a dataset folder that `fo.Dataset.from_dir(OUT, dataset_type=fo.types.FiftyOneDataset)` loads.

FiftyOne's JSON dataset layout (the one its importer recognises by a metadata.json without a
`version`, and reads with Sample.from_dict):

    metadata.json                 mask targets = the output's class names, class colours for the App, model version
    samples.json                  {"samples": [...]}: filepath, key, batch_parse_id, segmentation, faces, landmarks
    fields/segmentation/<id>.png  each image's label map (8-bit, pixel = class index): a Segmentation's mask_path

`faces` are Detections, one per face: label "face", the face's own instance mask (`mask`: its
parts, in the pixels of its box), the parse score (output/quality.py) as `confidence`, so the
App's confidence slider and `F("confidence")` filter by parse quality, and as attributes
`face_index`, `face_score` (detector), `parse_score`, `parts_found`, `face_size` (shorter box
side, px), `<part>_confidence` and the detector box as `face_box`. The box is the detector's,
widened to whole pixels and to any part pixel outside it and clipped to the photo, so the mask
lies exactly on the photo's pixels. `landmarks` are Keypoints (five points per face, same
attributes); each sample's `metadata` is filled (ImageMetadata: width, height, size in bytes,
MIME type, channels) and carries `parse_score` (its lowest) and `face_count`. The App colours the
segmentation by class with our colours (color_by "value" and maskTargetsColors). FiftyOne reads
local images only, so an S3 source needs --copy-images (images then sit in OUT/images).
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from batch_parse.export.faces import Originals, Photo, write_file
from batch_parse.labels import LANDMARK_EDGES, LANDMARK_NAMES, PART_NAMES
from batch_parse.output.quality import PARSE_SCORE
from batch_parse.storage.location import parse_location

COLUMNS: tuple[str, ...] = ()
METADATA = "metadata.json"
SAMPLES = "samples.json"
SEGMENTATION_FIELD = "segmentation"
MASKS_DIR = f"fields/{SEGMENTATION_FIELD}"  # FiftyOne resolves mask_path under fields/<field>/ against the folder
FACES_FIELD, LANDMARKS_FIELD = "faces", "landmarks"
FACE_LABEL = "face"


def check_installed() -> None:
    """Nothing: the folder is JSON and PNGs; loading it needs fiftyone (see the README)."""


def metadata(model_versions: list[str], labels) -> dict:
    """metadata.json: mask targets and colours of the output's own classes (labels: export.LabelSet)."""
    mask_colors = [{"intTarget": i, "color": "#" + bytes(color).hex()} for i, color in enumerate(labels.class_colors) if i]
    return {
        "name": "batch-parse",
        "media_type": "image",
        "info": {
            "description": "batch-parse face parsing labels (STN-iCNN)",
            "model_version": ", ".join(model_versions),
            "licence": labels.licence.as_dict(),  # dataset.info["licence"] once loaded
            "mask_targets": {SEGMENTATION_FIELD: {str(i): name for i, name in enumerate(labels.class_names)}},
            "classes": {FACES_FIELD: [FACE_LABEL], LANDMARKS_FIELD: [FACE_LABEL]},
            "skeletons": {LANDMARKS_FIELD: {"labels": list(LANDMARK_NAMES), "edges": [list(e) for e in LANDMARK_EDGES]}},
            "app_config": {
                "color_scheme": {
                    # "value": each class in its own colour (by field, a mask is drawn in one colour).
                    "color_by": "value",
                    "fields": [{"path": SEGMENTATION_FIELD, "maskTargetsColors": mask_colors}],
                    "default_mask_targets_colors": mask_colors,
                },
            },
        },
    }  # fmt: skip


def serialize_mask(mask: np.ndarray) -> dict:
    """A numpy array as FiftyOne stores one in JSON (fiftyone.core.utils.serialize_numpy_array, extended JSON)."""
    buffer = io.BytesIO()
    np.save(buffer, mask, allow_pickle=False)
    return {"$binary": {"base64": base64.b64encode(zlib.compress(buffer.getvalue())).decode("ascii"), "subType": "00"}}


def _face_rect(photo: Photo, position: int, mask: np.ndarray) -> tuple[int, int, int, int]:
    """Whole-pixel [x0, y0, x1, y1) around the face box and any of its part pixels, clipped to the photo."""
    face, w, h = photo.faces[position], photo.width, photo.height
    if face.box is None:
        return 0, 0, w, h
    x0, y0 = int(np.floor(face.box[0] + 0.5)), int(np.floor(face.box[1] + 0.5))  # pixel-index box -> pixel edges
    x1, y1 = int(np.ceil(face.box[2] + 0.5)), int(np.ceil(face.box[3] + 0.5))
    ys, xs = np.nonzero(mask)
    if xs.size:
        x0, y0, x1, y1 = min(x0, xs.min()), min(y0, ys.min()), max(x1, xs.max() + 1), max(y1, ys.max() + 1)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    return (0, 0, w, h) if x1 <= x0 or y1 <= y0 else (int(x0), int(y0), int(x1), int(y1))


def _face_attributes(face) -> dict:
    return {
        "index": face.index, "face_index": face.index, "face_score": face.score, PARSE_SCORE: face.parse_score,
        "parts_found": face.parts_found, "face_size": face.size,
        "face_box": None if face.box is None else face.box.tolist(),
        **{f"{part}_confidence": face.part_confidence(p) for p, part in enumerate(PART_NAMES)},
    }  # fmt: skip


def _image_metadata(photo: Photo, size_bytes: int | None) -> dict:
    return {"_cls": "ImageMetadata", "width": photo.width, "height": photo.height, "num_channels": 3,
            "size_bytes": size_bytes, "mime_type": mimetypes.guess_type(photo.key)[0]}  # fmt: skip


def _sample(photo: Photo, filepath: str, mask_path: str, size_bytes: int | None) -> dict:
    w, h = photo.width, photo.height
    detections, keypoints = [], []
    for position, face in enumerate(photo.faces):
        mask = photo.face_mask(position)
        x0, y0, x1, y1 = _face_rect(photo, position, mask)
        detections.append({
            "_cls": "Detection", "label": FACE_LABEL, "bounding_box": [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h],
            "mask": serialize_mask(mask[y0:y1, x0:x1]), "confidence": face.parse_score, **_face_attributes(face),
        })  # fmt: skip
        if face.landmarks is not None:
            # Keypoints are relative [0, 1] positions; landmarks are pixel indices (a pixel's centre at +0.5).
            points = ((face.landmarks + 0.5) / [w, h]).tolist()
            keypoints.append({"_cls": "Keypoint", "label": FACE_LABEL, "points": points, "confidence": [face.score] * len(points),
                              **_face_attributes(face)})  # fmt: skip
    scores = photo.parse_scores()
    return {
        "filepath": filepath,
        "tags": [],
        "metadata": _image_metadata(photo, size_bytes),
        "key": photo.key,
        "batch_parse_id": str(photo.id),
        PARSE_SCORE: min(scores) if scores else None,
        "face_count": len(photo.faces),
        SEGMENTATION_FIELD: {"_cls": "Segmentation", "mask_path": mask_path},
        FACES_FIELD: {"_cls": "Detections", "detections": detections},
        LANDMARKS_FIELD: {"_cls": "Keypoints", "keypoints": keypoints},
    }


def export(photos: Iterable[Photo], out: Path, originals: Originals | None, result, labels) -> None:
    versions: set[str] = set()
    with open(out / SAMPLES, "w", encoding="utf-8") as f:
        f.write('{"samples": [')
        for photo in photos:
            size_bytes = photo.size
            if originals is not None:
                filepath = originals.copy(photo, out)
                size_bytes = (out / filepath).stat().st_size  # an EXIF-rotated copy is re-encoded
                result.copied += 1
            elif photo.source and parse_location(photo.source).is_s3:
                raise ValueError("FiftyOne reads local images only: add --copy-images to export an S3 source")
            else:
                filepath = photo.uri()
            label_map, _ = photo.label_maps()
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(label_map)).save(buffer, "PNG")
            mask_path = f"{MASKS_DIR}/{photo.id & 0xFFFFFFFFFFFFFFFF:016x}.png"
            write_file(out, mask_path, buffer.getvalue())
            sample = _sample(photo, filepath, mask_path, size_bytes)
            f.write(("\n" if result.images == 0 else ",\n") + json.dumps(sample, separators=(",", ":")))
            versions.add(photo.model_version)
            result.images += 1
            result.faces += len(photo.faces)
        f.write("\n]}\n")
    (out / METADATA).write_text(json.dumps(metadata(sorted(versions), labels), indent=1), encoding="utf-8")
    result.files += [METADATA, SAMPLES, MASKS_DIR + "/"]
