"""Alignment: each face warped upright into one canonical frame by a similarity transform from its
five landmarks, and the parser's results (label map, part windows) mapped back to photo pixels.

Coordinates are pixel-index coordinates (a pixel's centre is at its integer index) in both the
photo and the aligned frame. An `Alignment.matrix` M (2x3) maps photo (x, y, 1) to frame (u, v):
a user can redo any face's frame from the original with the stored matrix:
`photo.transform((w, h), Image.AFFINE, Alignment(M, w, h).pil_affine())`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Where the five landmarks sit in the canonical frame, as fractions of its side: eye at
# image-left, eye at image-right, nose tip, mouth corners (image-left, image-right). Measured as
# the median MTCNN landmarks on UTKFace crops like those stn-icnn/v1 was trained on (v2 was trained
# on faces aligned to this same template)
# (`python benchmarks/fit_template.py --limit 1500`: 1,402 crops with one face; symmetrised,
# as training flips faces), so an aligned face looks like what the parser learned from: upright,
# eyes level, with the margin those crops leave for brows, forehead and chin.
TEMPLATE = np.array(
    [
        [0.2983, 0.2908],
        [0.7017, 0.2908],
        [0.5000, 0.5237],
        [0.3260, 0.6850],
        [0.6740, 0.6850],
    ],
    dtype=np.float64,
)
# Largest aligned frame: the shipped weights were trained on 200 px crops; 256 px keeps part
# crops sharp for big faces without paying for more than the model can use.
DEFAULT_MAX_SIDE = 256
# Smallest aligned frame: below this the parser has nothing left to see (a 32 px frame holds eyes
# ~10 px apart); faces that small are upsampled to it rather than dropped.
MIN_SIDE = 32


@dataclass(frozen=True)
class Alignment:
    """How one face's aligned frame relates to its photo."""

    matrix: np.ndarray  # (2,3) float64: photo pixel (x, y, 1) -> frame pixel (u, v)
    width: int  # frame size in pixels (square for detected faces; the photo's size for whole-image)
    height: int

    @property
    def inverse(self) -> np.ndarray:
        """(2,3) float64: frame pixel (u, v, 1) -> photo pixel (x, y)."""
        a = self.matrix[:, :2]
        inv = np.linalg.inv(a)
        return np.hstack([inv, -inv @ self.matrix[:, 2:]])

    @property
    def scale(self) -> float:
        """Frame pixels per photo pixel (<= 1 unless the face is smaller than MIN_SIDE)."""
        return float(math.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def pil_affine(self) -> tuple[float, ...]:
        """`data` for `PIL.Image.transform((width, height), Image.AFFINE, data)`, which redoes this
        frame from the photo: PIL maps output pixel centres (u+0.5, v+0.5) to input coordinates
        whose pixel centres are at +0.5, so the inverse is shifted into that convention."""
        inv = self.inverse
        shift = 0.5 - 0.5 * inv[:, :2].sum(axis=1) + inv[:, 2]
        return (inv[0, 0], inv[0, 1], shift[0], inv[1, 0], inv[1, 1], shift[1])

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """(...,2) frame points -> photo points."""
        return points @ self.inverse[:, :2].T + self.inverse[:, 2]

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """(...,2) photo points -> frame points."""
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no mirroring) src -> dst.

    Umeyama's closed form; (N,2) points, N >= 2. Returns (2,3).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection fits better: refuse it
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    var = (s**2).sum() / len(src)
    scale = (sig * sign).sum() / var if var > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def fit(landmarks: np.ndarray, max_side: int = DEFAULT_MAX_SIDE) -> Alignment:
    """The frame for one face from its (5,2) landmarks: at the face's own resolution, capped."""
    unit = similarity(landmarks, TEMPLATE)  # photo -> frame of side 1
    native = 1.0 / math.sqrt(abs(np.linalg.det(unit[:, :2])))  # the frame's side in photo pixels
    side = int(min(max_side, max(MIN_SIDE, round(native))))
    # Pixel-index coordinates: the frame's edges are at -0.5 and side - 0.5.
    matrix = unit * side
    matrix[:, 2] -= 0.5
    return Alignment(matrix, side, side)


def whole_image(width: int, height: int) -> Alignment:
    """The identity 'alignment' of `--faces whole-image`: the photo is the frame."""
    return Alignment(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), width, height)


def warp(image: torch.Tensor, alignment: Alignment) -> torch.Tensor:
    """(3,H,W) uint8 photo -> (3,h,w) uint8 aligned frame (bilinear; zeros outside the photo).

    A frame smaller than the face is made from an antialiased downscale of the face's region
    first: bilinear sampling alone would alias a large face into noise.
    """
    _, height, width = image.shape
    inv = alignment.inverse
    corners = alignment.to_photo(np.array([[-0.5, -0.5], [alignment.width - 0.5, -0.5],
                                           [alignment.width - 0.5, alignment.height - 0.5], [-0.5, alignment.height - 0.5]]))
    x0, y0 = max(0, math.floor(corners[:, 0].min()) - 1), max(0, math.floor(corners[:, 1].min()) - 1)
    x1, y1 = min(width, math.ceil(corners[:, 0].max()) + 2), min(height, math.ceil(corners[:, 1].max()) + 2)
    if x1 <= x0 or y1 <= y0:  # frame entirely off the photo
        return torch.zeros(3, alignment.height, alignment.width, dtype=torch.uint8, device=image.device)
    region = image[:, y0:y1, x0:x1].unsqueeze(0).float()
    rh, rw = region.shape[-2:]
    scale = alignment.scale
    if scale < 0.75:
        rh, rw = max(1, round(rh * scale)), max(1, round(rw * scale))
        region = F.interpolate(region, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    kx, ky = rw / (x1 - x0), rh / (y1 - y0)  # region pixels per photo pixel
    u = torch.arange(alignment.width, dtype=torch.float64, device=image.device)
    v = torch.arange(alignment.height, dtype=torch.float64, device=image.device)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    xs = inv[0, 0] * uu + inv[0, 1] * vv + inv[0, 2]
    ys = inv[1, 0] * uu + inv[1, 1] * vv + inv[1, 2]
    # Photo index coords -> region index coords -> grid_sample's normalised coords (align_corners=False).
    gx = (2 * ((xs - x0 + 0.5) * kx) / rw) - 1
    gy = (2 * ((ys - y0 + 0.5) * ky) / rh) - 1
    grid = torch.stack([gx, gy], dim=-1).float().unsqueeze(0)
    out = F.grid_sample(region, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def photo_region(alignment: Alignment, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the photo pixels the frame covers, clipped to the photo (may be empty)."""
    w, h = alignment.width, alignment.height
    corners = alignment.to_photo(np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]]))
    x0, y0 = max(0, math.floor(corners[:, 0].min())), max(0, math.floor(corners[:, 1].min()))
    x1, y1 = min(width, math.ceil(corners[:, 0].max()) + 1), min(height, math.ceil(corners[:, 1].max()) + 1)
    return x0, y0, max(x0, x1), max(y0, y1)


def label_map_to_photo(labels: torch.Tensor, alignment: Alignment, width: int, height: int) -> tuple[torch.Tensor, int, int]:
    """A frame's (h,w) uint8 label map -> (label map over the photo region it covers, x0, y0).

    Nearest neighbour: labels are classes, not intensities. Photo pixels outside the frame are
    background (0).
    """
    x0, y0, x1, y1 = photo_region(alignment, width, height)
    if x1 <= x0 or y1 <= y0:
        return torch.zeros(0, 0, dtype=torch.uint8, device=labels.device), x0, y0
    m = alignment.matrix
    xs = torch.arange(x0, x1, dtype=torch.float64, device=labels.device)
    ys = torch.arange(y0, y1, dtype=torch.float64, device=labels.device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    u = torch.round(m[0, 0] * xx + m[0, 1] * yy + m[0, 2]).long()
    v = torch.round(m[1, 0] * xx + m[1, 1] * yy + m[1, 2]).long()
    inside = (u >= 0) & (u < alignment.width) & (v >= 0) & (v < alignment.height)
    out = torch.zeros(y1 - y0, x1 - x0, dtype=torch.uint8, device=labels.device)
    out[inside] = labels[v[inside], u[inside]]
    return out, x0, y0


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(...,4) boxes [x0,y0,x1,y1] -> (...,4,2) corners: top-left, top-right, bottom-right, bottom-left."""
    x0, y0, x1, y1 = np.moveaxis(np.asarray(boxes), -1, 0)
    return np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1), np.stack([x0, y1], -1)], -2)
