"""COCO instance segmentation (annotations.json): one annotation per part class per face, masks as RLE,
and one `face` annotation per face with its box and five landmarks as keypoints.

Part categories: ids are our class indices, one per class of the output's model (its metadata's
`class_names`: no `skin` category for 9-class weights; background has none), masks are
pycocotools' compressed RLE over the whole image, `bbox` and `area` are pycocotools' own, and
`score` is the confidence of the part the class belongs to (`mouth` for the three lip/mouth
classes; none for skin, which no part window parses). The `face` category (id FACE_CATEGORY_ID) is a keypoint category: its annotations hold
the detector box as `bbox` ([x, y, w, h], pixel edges, clipped to the image), the five landmarks
as `keypoints` ([x, y, 2] each in pixel-index coordinates, as COCO's own; [0, 0, 0] and
num_keypoints 0 for whole-image rows), the union of the face's parts as `segmentation`, and the
face's parse score (output/quality.py) as `score`. Every annotation carries `face_index`,
`face_score` (detector), `parse_score` and the part confidences in `attributes` (the field CVAT
reads). COCO image ids are 1..N (JavaScript tools cannot hold our 64-bit ids): each image keeps
the output's `id` as the string `batch_parse_id` and its `key`, and its faces' lowest parse score
as `parse_score`. `file_name` is the key, relative to the image root: the job's source folder (or
bucket), or with --copy-images the copy's name under OUT/images (faces.copied_name); `coco_url` is the original's full location.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from batch_parse.export.faces import IMAGES_DIR, Originals, Photo
from batch_parse.labels import CLASS_PART, LANDMARK_EDGES, LANDMARK_NAMES, NUM_CLASSES, PART_NAMES
from batch_parse.output.quality import PARSE_SCORE

COLUMNS: tuple[str, ...] = ()
ANNOTATIONS = "annotations.json"
SUPERCATEGORY = "face"
FACE_CATEGORY_ID = NUM_CLASSES  # after every class any model has: the same id whatever the output's classes
FACE_CATEGORY = "face"
VISIBLE = 2  # COCO keypoint visibility: labelled and visible
LICENCE_ID = 1


def check_installed() -> None:
    try:
        import pycocotools.mask  # noqa: F401
    except ImportError as exc:
        raise ValueError("--to coco needs pycocotools: pip install 'batch-parse[export]'") from exc


def export(photos: Iterable[Photo], out: Path, originals: Originals | None, result, labels) -> None:
    from pycocotools import mask as coco_mask

    images, annotations, sources, versions = [], [], set(), set()
    for image_id, photo in enumerate(photos, 1):
        copied = originals.copy(photo, out) if originals is not None else None
        result.copied += copied is not None
        sources.add(photo.source)
        versions.add(photo.model_version)
        scores = photo.parse_scores()
        images.append({
            "id": image_id, "file_name": photo.key if copied is None else copied.removeprefix(f"{IMAGES_DIR}/"),
            "width": photo.width, "height": photo.height, "coco_url": photo.uri(),
            "batch_parse_id": str(photo.id), "key": photo.key, "face_count": len(photo.faces), "license": LICENCE_ID,
            PARSE_SCORE: min(scores) if scores else None,
        })  # fmt: skip
        for position, face in enumerate(photo.faces):
            annotations.append(_face_annotation(len(annotations) + 1, image_id, photo, position, coco_mask))
        for position, cls, mask in photo.parts():
            face = photo.faces[position]
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "area": int(coco_mask.area(rle)), "bbox": [float(v) for v in coco_mask.toBbox(rle)], "iscrowd": 0,
                "score": face.part_confidence(CLASS_PART[cls]), "attributes": _attributes(face),
            })  # fmt: skip
            result.parts += 1
        result.images += 1
        result.faces += len(photo.faces)
    document = {
        "info": {
            "description": "batch-parse face parsing labels (STN-iCNN): one annotation per part class per face",
            "model_version": ", ".join(sorted(versions)),
            "image_root": IMAGES_DIR if originals else ", ".join(sorted(s or "unknown" for s in sources)),
            "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "licence": labels.licence.as_dict(),
        },
        # COCO's licence list: one entry, the labels' (every image and annotation is under it; the
        # images keep their own terms, which the output does not know).
        "licenses": [{"id": LICENCE_ID, "name": labels.licence.name, "url": labels.licence.link,
                      "terms": labels.licence.terms, "source": labels.licence.source}],
        "images": images,
        "annotations": annotations,
        "categories": [
            *({"id": cls, "name": name, "supercategory": SUPERCATEGORY} for cls, name in labels.part_classes),
            {"id": FACE_CATEGORY_ID, "name": FACE_CATEGORY, "supercategory": SUPERCATEGORY, "keypoints": list(LANDMARK_NAMES),
             "skeleton": [[a + 1, b + 1] for a, b in LANDMARK_EDGES]},  # COCO skeletons count keypoints from 1
        ],
    }
    (out / ANNOTATIONS).write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
    result.files.append(ANNOTATIONS)


def _attributes(face) -> dict:
    return {"face_index": face.index, "face_score": face.score, PARSE_SCORE: face.parse_score,
            **{f"{part}_confidence": face.part_confidence(p) for p, part in enumerate(PART_NAMES)}}  # fmt: skip


def _face_annotation(annotation_id: int, image_id: int, photo: Photo, position: int, coco_mask) -> dict:
    """The face itself: detector box, five landmarks as keypoints, its parts' union as the mask, parse score."""
    face = photo.faces[position]
    rle = coco_mask.encode(np.asfortranarray(photo.face_mask(position).astype(np.uint8)))
    if face.box is None:
        bbox = [0.0, 0.0, float(photo.width), float(photo.height)]
    else:  # pixel-index box -> pixel edges, clipped to the image
        x0, y0, x1, y1 = np.clip(face.box + 0.5, 0, [photo.width, photo.height, photo.width, photo.height]).tolist()
        bbox = [x0, y0, x1 - x0, y1 - y0]
    if face.landmarks is None:
        keypoints, count = [0.0] * (3 * len(LANDMARK_NAMES)), 0
    else:
        keypoints, count = [v for x, y in face.landmarks.tolist() for v in (x, y, VISIBLE)], len(LANDMARK_NAMES)
    return {
        "id": annotation_id, "image_id": image_id, "category_id": FACE_CATEGORY_ID,
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
        "area": bbox[2] * bbox[3], "bbox": bbox, "iscrowd": 0, "keypoints": keypoints, "num_keypoints": count,
        "score": face.parse_score, "attributes": _attributes(face),
    }  # fmt: skip
