"""FiftyOne: a dataset folder that `fo.Dataset.from_dir(OUT, dataset_type=fo.types.FiftyOneDataset)` loads.

FiftyOne's JSON dataset layout (the one its importer recognises by a metadata.json without a
`version`, and reads with Sample.from_dict):

    metadata.json                 mask targets = our class names, class colours for the App, model version
    samples.json                  {"samples": [...]}: filepath, key, batch_parse_id, segmentation, faces, landmarks
    fields/segmentation/<id>.png  each image's label map (8-bit, pixel = class index): a Segmentation's mask_path

`faces` are Detections (label "face", relative [x, y, w, h] box, detector score as confidence,
face_index), `landmarks` Keypoints (five points per face). FiftyOne reads local images only, so an
S3 source needs --copy-images (images then sit in OUT/images).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from batch_parse.export.faces import Originals, Photo, write_file
from batch_parse.labels import CLASS_COLORS, CLASS_NAMES
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


def metadata(model_versions: list[str]) -> dict:
    return {
        "name": "batch-parse",
        "media_type": "image",
        "info": {
            "description": "batch-parse face parsing labels (STN-iCNN)",
            "model_version": ", ".join(model_versions),
            "mask_targets": {SEGMENTATION_FIELD: {str(i): name for i, name in enumerate(CLASS_NAMES)}},
            "classes": {FACES_FIELD: [FACE_LABEL], LANDMARKS_FIELD: [FACE_LABEL]},
            "app_config": {
                "color_scheme": {
                    "fields": [{
                        "path": SEGMENTATION_FIELD,
                        "maskTargetsColors": [{"intTarget": i, "color": "#" + bytes(color).hex()}
                                              for i, color in enumerate(CLASS_COLORS) if i],
                    }],
                },
            },
        },
    }  # fmt: skip


def _sample(photo: Photo, filepath: str, mask_path: str) -> dict:
    w, h = photo.width, photo.height
    detections, keypoints = [], []
    for face in photo.faces:
        if face.box is not None:
            x0, y0, x1, y1 = face.box.tolist()
            detections.append({
                "_cls": "Detection", "label": FACE_LABEL, "bounding_box": [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h],
                "confidence": face.score, "index": face.index, "face_index": face.index,
            })  # fmt: skip
        if face.landmarks is not None:
            points = (face.landmarks / [w, h]).tolist()
            keypoints.append({"_cls": "Keypoint", "label": FACE_LABEL, "points": points, "index": face.index, "face_index": face.index})
    return {
        "filepath": filepath,
        "tags": [],
        "key": photo.key,
        "batch_parse_id": str(photo.id),
        SEGMENTATION_FIELD: {"_cls": "Segmentation", "mask_path": mask_path},
        FACES_FIELD: {"_cls": "Detections", "detections": detections},
        LANDMARKS_FIELD: {"_cls": "Keypoints", "keypoints": keypoints},
    }


def export(photos: Iterable[Photo], out: Path, originals: Originals | None, result) -> None:
    versions: set[str] = set()
    with open(out / SAMPLES, "w", encoding="utf-8") as f:
        f.write('{"samples": [')
        for photo in photos:
            if originals is not None:
                filepath = originals.copy(photo, out)
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
            sample = _sample(photo, filepath, mask_path)
            f.write(("\n" if result.images == 0 else ",\n") + json.dumps(sample, separators=(",", ":")))
            versions.add(photo.model_version)
            result.images += 1
            result.faces += len(photo.faces)
        f.write("\n]}\n")
    (out / METADATA).write_text(json.dumps(metadata(sorted(versions)), indent=1), encoding="utf-8")
    result.files += [METADATA, SAMPLES, MASKS_DIR + "/"]
