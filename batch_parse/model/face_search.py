"""Finding a face that is too small for the whole-photo pass: stage 1 run on a larger view.

Stage 1 sees the photo at 128x128. It was trained on faces whose parts span roughly 30-70% of
that view, so in a wide shot (a face a fifth of the frame, a body and a room around it) the
face is a few dozen pixels and the localiser puts its windows on whatever looks most like a
face, often clothing. Stage 1 is fully convolutional, though: run on the same photo at
SEARCH_SIZE pixels, a face of 10-25% of the frame has the size it was trained on, and the
nose, its largest and most reliable class, comes out as a solid blob.

`face_candidates` turns those blobs into square crops that would frame the face the way
training did; the parser parses each crop and keeps the most confident result (parser.py).
Everything here is batch-free numpy/torch on one image's probabilities: the search only runs
for the few photos whose first pass was unsure.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from batch_parse.labels import CLASS_NAMES
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
# Class groups a face shows around its nose (the sides are interchangeable here).
PART_GROUPS = ((1, 2), (3, 4), (5,), (6, 7, 8))


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
    the six parts' union expected around a nose that size, and the mean foreground
    probability inside that square (a nose with eyes, brows and lips around it scores high;
    a lone nose-coloured patch on a shirt scores low).
    """
    labels = probs.argmax(0)
    components = connected_components(labels == NOSE)
    ids, areas = torch.unique(components[components > 0], return_counts=True)
    size = probs.shape[-1]
    found = []
    for component, area in zip(ids.tolist(), areas.tolist()):
        if area < MIN_NOSE_PIXELS:
            continue
        ys, xs = torch.nonzero(components == component, as_tuple=True)
        cx, cy = xs.double().mean().item(), ys.double().mean().item()
        side = PARTS_PER_NOSE * float(np.sqrt(area))
        x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
        x1, y1 = min(size, int(np.ceil(cx + side / 2))), min(size, int(np.ceil(cy + side / 2)))
        window = probs[:, y0:y1, x0:x1].amax((1, 2))
        # A face has all four: the weakest group's evidence decides.
        score = min(window[list(group)].max().item() for group in PART_GROUPS)
        found.append((cx, cy, side, score))
    found.sort(key=lambda c: -c[3])
    return found[:limit]


def search_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3,H,W) -> float (3,size,size) in 0..1: the photo, aspect kept, zero-padded square.

    The same placement as the "square" stage-1 input, at a larger size, whatever geometry the
    weights use: the search only needs stage 1 to see faces at the scale it was trained on.
    """
    (w, h), (ox, oy) = square_placement(image.shape[2], image.shape[1], size)
    x = F.interpolate(image.unsqueeze(0).float().div_(255), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return F.pad(x, (ox, size - w - ox, oy, size - h - oy))[0]


def candidate_crops(probs: torch.Tensor, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Search-view probabilities of a width x height photo -> square crops (x0,y0,x1,y1) around
    its candidate faces, in the photo's pixels, clipped to it; best candidate first."""
    size = probs.shape[-1]
    (w, _), (ox, oy) = square_placement(width, height, size)
    scale = width / w  # photo pixels per view pixel (the same on both axes)
    crops = []
    for cx, cy, side, _ in face_candidates(probs):
        x, y = (cx + 0.5 - ox) * scale, (cy + 0.5 - oy) * scale
        half = FACE_CROP_MARGIN * side * scale / 2
        box = (max(0, int(x - half)), max(0, int(y - half)), min(width, int(np.ceil(x + half))), min(height, int(np.ceil(y + half))))
        if min(box[2] - box[0], box[3] - box[1]) >= MIN_CROP:
            crops.append(box)
    return crops
