"""Human points as a weak label: faces the teacher cannot label, trained on their hand-placed points only.

The teacher (a face mesh) fails on most profiles, so their labels are dropped and stage 1 never
learns from them; but CFP's training persons come with hand-placed points on every photo,
profiles included (facepool.py keeps one point a part: the visible eye, the brow, the nose tip,
both lips), and Caltech's with eyes, nose and mouth. A face with points and no clean labels
enters the pool as a label map that says only this (pool.py --points):

    IGNORE                 everywhere: no class is known there, no loss
    POINT_BASE + g         a small disc around a point of part group g (POINT_GROUPS[g])

The map is warped, mirrored and occluded with the image as any label map is (augment.py), so
the points stay where their part is. Stage a scores such a pixel right when the predicted
probabilities of the group's classes sum high (`point_loss`: -log of that sum, e.g. "left or
right eye", since a point says which part, not which side the model calls it). A face counts
once, as every labelled face does (train.stage1_loss): its points weigh as much as another face's
pixels, not as much as the whole batch's (that first weighting taught stage 1 to draw parts far
too large: points say where a part is, never where it is not). Stages b, c and e2e learn windows
and part shapes, which points do not give: they skip these faces.
"""

from __future__ import annotations

import numpy as np
import torch

from batch_parse.labels import F1_GROUPS, NUM_CLASSES

IGNORE = 255
POINT_BASE = 200
POINT_GROUPS: tuple[str, ...] = ("brows", "eyes", "nose", "upper_lip", "lower_lip", "mouth")
# Disc radius in pixels of the packed canvas (256): 2.5 px keeps a point inside its part on a
# 256-px face (an eye is ~20 px wide) and leaves a pixel or two at stage 1's 128.
RADIUS = 2.5
POINT_NAME_SUFFIX = "~points"  # how a pool names these rows: the face's name + this

assert POINT_BASE >= NUM_CLASSES and POINT_BASE + len(POINT_GROUPS) <= IGNORE


def point_map(height: int, width: int, probes: list[tuple[str, list[float]]], radius: float = RADIUS,
              scale: float = 1.0) -> np.ndarray:
    """(height, width) uint8: IGNORE, with a disc of POINT_BASE + g at each probe of a known group.

    probes: (group, [u, v]) in the face frame's pixels; scale: frame -> map pixels."""
    out = np.full((height, width), IGNORE, np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    for group, (u, v) in probes:
        if group in POINT_GROUPS:
            disc = (xs + 0.5 - u * scale) ** 2 + (ys + 0.5 - v * scale) ** 2 <= radius**2
            out[disc] = POINT_BASE + POINT_GROUPS.index(group)
    return out


def is_point_face(name: str) -> bool:
    return name.endswith(POINT_NAME_SUFFIX)


# (groups, classes) 0/1: which classes each group accepts.
_GROUP_CLASSES = torch.zeros(len(POINT_GROUPS), NUM_CLASSES)
for _g, _group in enumerate(POINT_GROUPS):
    _GROUP_CLASSES[_g, list(F1_GROUPS[_group])] = 1


def point_pixels(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of `target`'s point pixels, each such pixel's group index into POINT_GROUPS)."""
    mask = (target >= POINT_BASE) & (target < POINT_BASE + len(POINT_GROUPS))
    return mask, (target[mask] - POINT_BASE).long()


def point_rows(labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the faces labelled by points only (their maps are IGNORE but for the points)."""
    return (labels == IGNORE).flatten(1).any(1)


def point_loss(logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """(B,) per face: mean -log P(point's group) over its point pixels of `target` (B,H,W), 0 for a
    face without any; None when the batch has none.

    logp: (B,C,H,W) log-probabilities of a model with C classes (a 9-class model lacks skin, which no
    group holds)."""
    mask, groups = point_pixels(target)
    if not bool(mask.any()):
        return None
    picked = logp.permute(0, 2, 3, 1)[mask]  # (P, C)
    allowed = _GROUP_CLASSES[groups, : picked.shape[1]].to(picked.device).bool()
    nll = -torch.logsumexp(picked.float().masked_fill(~allowed, float("-inf")), 1)
    face = mask.nonzero()[:, 0]
    sums = torch.zeros(len(target), device=nll.device).index_add(0, face, nll)
    counts = torch.zeros(len(target), device=nll.device).index_add(0, face, torch.ones_like(nll))
    return sums / counts.clamp(min=1)


def point_hits(pred: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """(hits, point pixels): the pixels of `target`'s point discs where the predicted class map
    `pred` (same shape, long) holds a class of the point's group. The weak label's own score: how
    often the model puts a part where a person placed it (as probes.probe_hits does on one pixel)."""
    mask, groups = point_pixels(target)
    if not bool(mask.any()):
        return 0, 0
    allowed = _GROUP_CLASSES.to(pred.device)[groups, pred[mask].clamp(max=NUM_CLASSES - 1)]
    return int(allowed.sum().item()), int(mask.sum().item())
