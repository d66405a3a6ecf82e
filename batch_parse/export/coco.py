"""COCO instance segmentation (annotations.json): one annotation per part class per face, masks as RLE.

Category ids are our class indices (labels.CLASS_NAMES; background has none), masks are
pycocotools' compressed RLE over the whole image, `bbox` and `area` are pycocotools' own. COCO
image ids are 1..N (JavaScript tools cannot hold our 64-bit ids): each image keeps the output's
`id` as the string `batch_parse_id` and its `key`; each annotation carries the face's
`face_index` and detector `face_score` in `attributes` (the field CVAT reads). `file_name` is the
key, relative to the image root: the job's source folder (or bucket), or with --copy-images
the copy's name under OUT/images (faces.copied_name); `coco_url` is the original's full location.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from batch_parse.export.faces import IMAGES_DIR, Originals, Photo
from batch_parse.labels import CLASS_NAMES

COLUMNS: tuple[str, ...] = ()
ANNOTATIONS = "annotations.json"
SUPERCATEGORY = "face"


def check_installed() -> None:
    try:
        import pycocotools.mask  # noqa: F401
    except ImportError as exc:
        raise ValueError("--to coco needs pycocotools: pip install 'batch-parse[export]'") from exc


def export(photos: Iterable[Photo], out: Path, originals: Originals | None, result) -> None:
    from pycocotools import mask as coco_mask

    images, annotations, sources, versions = [], [], set(), set()
    for image_id, photo in enumerate(photos, 1):
        copied = originals.copy(photo, out) if originals is not None else None
        result.copied += copied is not None
        sources.add(photo.source)
        versions.add(photo.model_version)
        images.append({
            "id": image_id, "file_name": photo.key if copied is None else copied.removeprefix(f"{IMAGES_DIR}/"),
            "width": photo.width, "height": photo.height, "coco_url": photo.uri(),
            "batch_parse_id": str(photo.id), "key": photo.key, "face_count": len(photo.faces),
        })  # fmt: skip
        for position, cls, mask in photo.parts():
            face = photo.faces[position]
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "area": int(coco_mask.area(rle)), "bbox": [float(v) for v in coco_mask.toBbox(rle)], "iscrowd": 0,
                "attributes": {"face_index": face.index, "face_score": face.score},
            })  # fmt: skip
        result.images += 1
        result.faces += len(photo.faces)
    result.parts = len(annotations)
    document = {
        "info": {
            "description": "batch-parse face parsing labels (STN-iCNN): one annotation per part class per face",
            "model_version": ", ".join(sorted(versions)),
            "image_root": IMAGES_DIR if originals else ", ".join(sorted(s or "unknown" for s in sources)),
            "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cls, "name": name, "supercategory": SUPERCATEGORY} for cls, name in enumerate(CLASS_NAMES) if cls],
    }
    (out / ANNOTATIONS).write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
    result.files.append(ANNOTATIONS)
