"""Finding a face that is too small for the whole-photo pass: stage 1 run on a larger view.

Stage 1 sees the photo at 128x128. It was trained on faces whose parts span roughly 30-70% of
that view, so in a wide shot (a face a fifth of the frame, a body and a room around it) the
face is a few dozen pixels and the localiser puts its windows on whatever looks most like a
face, often clothing. Stage 1 is fully convolutional, though: run on the same photo at
ModelConfig.search_sizes pixels (384, 768), a face of ~5-25% of the frame has the size it was
trained on, and the nose, its largest and most reliable class, comes out as a solid blob.

`candidate_crops` turns those blobs into square crops that would frame the face the way
training did; the parser parses each crop and keeps the most confident result (parser.py).
Everything here works on one image's probabilities: the search only runs for the photos
whose first pass was unsure.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from batch_parse.labels import CLASS_NAMES, PARTS, STAGE2_NETWORKS
from batch_parse.model.geometry import square_placement

NOSE = CLASS_NAMES.index("nose")
# Side of the six parts' union / sqrt(nose area), measured on the teacher's labels of the
# UTKFace test split (median 3.14, 5-95% 2.9-3.5).
PARTS_PER_NOSE = 3.15
MIN_NOSE_PIXELS = 6  # in the search view: smaller blobs are noise, not noses
MAX_CANDIDATES = 3
# Crop side / side of the parts' union: the face fills a crop about as it filled training images.
FACE_CROP_MARGIN = 1.8
MIN_CROP = 16  # pixels: a smaller crop holds no face the model can parse
# What a face shows around its nose: the classes of each stage-2 network (brows, eyes, nose,
# mouth), both sides together.
PART_GROUPS = tuple(tuple(c for part in PARTS if part.network == net for c in part.classes) for net in STAGE2_NETWORKS)


def square_box(cx: float, cy: float, side: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The side x side square centred on (cx, cy), as (x0, y0, x1, y1) clipped to width x height."""
    half = side / 2
    return max(0, int(cx - half)), max(0, int(cy - half)), min(width, int(np.ceil(cx + half))), min(height, int(np.ceil(cy + half)))


def face_crop(cx: float, cy: float, parts_side: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The crop that frames a face whose parts span parts_side pixels around (cx, cy) as in
    training, clipped to the photo; None when too small to parse."""
    box = square_box(cx, cy, FACE_CROP_MARGIN * parts_side, width, height)
    return box if min(box[2] - box[0], box[3] - box[1]) >= MIN_CROP else None


def connected_components(mask: torch.Tensor, max_iterations: int = 256) -> torch.Tensor:
    """(H,W) bool -> (H,W) int64 labels (0 = off, >0 = component id), 8-connectivity.

    Every on-pixel starts with its own id and repeatedly takes the largest id among its
    neighbours; ids stop changing when each component holds one. Blobs are a few dozen
    pixels across, so this needs a few dozen iterations of one max-pool each.
    """
    height, width = mask.shape
    ids = torch.arange(1, height * width + 1, dtype=torch.float64, device=mask.device).reshape(1, 1, height, width)
    on = mask.reshape(1, 1, height, width)
    ids = torch.where(on, ids, torch.zeros_like(ids))
    for _ in range(max_iterations):
        grown = torch.where(on, F.max_pool2d(ids, 3, stride=1, padding=1), ids)
        if torch.equal(grown, ids):
            break
        ids = grown
    return ids[0, 0].long()


def face_candidates(probs: torch.Tensor, limit: int = MAX_CANDIDATES) -> list[tuple[float, float, float, float]]:
    """Stage-1 probabilities (9,S,S) of a search view -> up to `limit` faces, best first.

    Each is (cx, cy, side, score) in the view's pixels: the nose blob's centre, the side of
    the six parts' union expected around a nose that size, and the evidence of the weakest
    part group in that square (a nose with eyes, brows and lips around it scores high; a lone
    nose-coloured patch on a shirt scores low).
    """
    components = connected_components(probs.argmax(0) == NOSE)
    ys, xs = torch.nonzero(components, as_tuple=True)
    # Area and centroid of every blob in one pass over its pixels.
    _, blob = torch.unique(components[ys, xs], return_inverse=True)
    areas = torch.bincount(blob)
    sum_x = torch.bincount(blob, weights=xs.double())
    sum_y = torch.bincount(blob, weights=ys.double())
    size = probs.shape[-1]
    found = []
    for area, sx, sy in zip(areas.tolist(), sum_x.tolist(), sum_y.tolist()):
        if area < MIN_NOSE_PIXELS:
            continue
        cx, cy = sx / area, sy / area
        side = PARTS_PER_NOSE * float(np.sqrt(area))
        x0, y0, x1, y1 = square_box(cx, cy, side, size, size)
        window = probs[:, y0:y1, x0:x1].amax((1, 2))
        # A face has all four: the weakest group's evidence decides.
        score = min(window[list(group)].max().item() for group in PART_GROUPS)
        found.append((cx, cy, side, score))
    found.sort(key=lambda c: -c[3])
    return found[:limit]


def candidate_crops(probs: torch.Tensor, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Search-view probabilities of a width x height photo -> square crops (x0,y0,x1,y1) around
    its candidate faces, in the photo's pixels, clipped to it; best candidate first."""
    size = probs.shape[-1]
    (w, _), (ox, oy) = square_placement(width, height, size)
    scale = width / w  # photo pixels per view pixel (the same on both axes)
    crops = (face_crop((cx + 0.5 - ox) * scale, (cy + 0.5 - oy) * scale, side * scale, width, height)
             for cx, cy, side, _ in face_candidates(probs))
    return [box for box in crops if box is not None]
