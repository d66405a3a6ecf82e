"""Training samples: batched geometric + photometric augmentation, and part-window targets.

A batch of square source images (faces, pixel labels) becomes a batch of square "photos" of
the same size in which the face is rotated (+-15 deg), rescaled (the authors' 0.8-1.5, plus a
zoom-out down to 0.4 so loosely framed photos work), shifted, sometimes mirrored (sides
swapped in the labels) and letterboxed, then recoloured and noised. Photos in the wild add
what the aligned faces of real corpora look like: blur (out of focus, upscaled small faces),
JPEG artefacts, and occluders (hands, microphones, masks) over which there is no part to label.
For turned heads and profiles (v3): a horizontal squeeze (a face turned out of plane is narrower
than the frontal template it was aligned to) and hard side light (one half of the face in shadow).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from batch_parse.labels import MIRROR_CLASS, NUM_CLASSES, PARTS

# Mirroring an image swaps the sides: brow_1 <-> brow_2, eye_1 <-> eye_2; values past the classes
# (train/points.py: human points, "unknown") have no side and stay.
_SWAP_SIDES = torch.arange(256)
_SWAP_SIDES[: len(MIRROR_CLASS)] = torch.tensor(MIRROR_CLASS, dtype=torch.long)
# Window side = this many times the part's larger bounding-box side: room for localiser error.
WINDOW_MARGIN = 1.6
MIN_WINDOW_FRACTION = 0.06  # of the image side, so tiny or missing parts still get a window
# Squeeze for turned heads: a fraction SQUEEZE_P of the samples narrowed to SQUEEZE_MIN..1 of their width.
SQUEEZE_P = 0.25
SQUEEZE_MIN = 0.7


def augment(
    images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, zoom_min: float = 0.4
) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B,3,S,S) float 0..1, labels (B,S,S) long -> augmented copies of the same shapes.

    Half the samples keep the authors' scale range (0.85-1.3); the other half are zoomed out to
    a face size between zoom_min and 0.85 of the photo, log-uniformly so small faces are common.
    """
    b, _, s, _ = images.shape
    rnd = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    angle = (rnd(b) * 2 - 1) * math.radians(15)
    zoom_out = rnd(b) < 0.5
    small = torch.exp(math.log(zoom_min) + rnd(b) * (math.log(0.85) - math.log(zoom_min)))
    scale = torch.where(zoom_out, small, 0.85 + rnd(b) * 0.45)  # face size / photo size
    # In source units: the face centre may move up to ~80% of the free room around it.
    shift = (rnd(b, 2) * 2 - 1) * (0.1 + 0.8 * ((1 - scale).clamp(min=0) / scale).unsqueeze(1))
    flip = rnd(b) < 0.5
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sign = torch.where(flip, -1.0, 1.0)
    # Out-of-plane squeeze: the face drawn narrower by q (the output's x reads the source 1/q as fast).
    q = torch.where(rnd(b) < SQUEEZE_P, SQUEEZE_MIN + rnd(b) * (1 - SQUEEZE_MIN), torch.ones(b))
    # Output pixel -> source pixel (normalised): squeeze, rotate, scale, shift, then optionally mirror x.
    theta = torch.stack(
        [torch.stack([cos * sign / q, -sin * sign, shift[:, 0] * sign], 1), torch.stack([sin / q, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    lab = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    lab = lab[:, 0].long()
    lab = torch.where(flip[:, None, None], _SWAP_SIDES[lab], lab)

    # Letterbox a quarter of them: photos that are not square reach stage 1 with black bars.
    bars = rnd(b) < 0.25
    for i in torch.nonzero(bars).flatten().tolist():
        band = int(s * (0.05 + 0.15 * rnd(1).item()))
        if rnd(1).item() < 0.5:
            out[i, :, :band], out[i, :, s - band :] = 0, 0
            lab[i, :band], lab[i, s - band :] = 0, 0
        else:
            out[i, :, :, :band], out[i, :, :, s - band :] = 0, 0
            lab[i, :, :band], lab[i, :, s - band :] = 0, 0

    # Photometric: brightness, contrast, saturation, occasional grey, Gaussian noise.
    grey = out.mean(1, keepdim=True)
    sat = torch.where(rnd(b) < 0.1, torch.zeros(b), 0.6 + rnd(b) * 0.8)[:, None, None, None]
    out = grey + (out - grey) * sat
    contrast = (0.7 + rnd(b) * 0.6)[:, None, None, None]
    mean = out.mean((1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean + ((rnd(b) - 0.5) * 0.3)[:, None, None, None]
    noise = (rnd(b) * 0.04)[:, None, None, None] * torch.randn(out.shape, generator=gen)
    out = side_light(out, gen)
    out = (out + noise).clamp(0, 1)
    out, lab = occlude(out, lab, gen)
    out = blur(out, gen)
    return jpeg(out, gen), lab


def side_light(images: torch.Tensor, gen: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """Hard light from one side on a fraction p of the samples: the image darkens by 30-75% past a
    soft vertical edge at a random column (a profile's far side, a face lit by a window)."""
    b, _, _, s = images.shape
    out = images.clone()
    x = torch.linspace(-1, 1, s)
    for i in torch.nonzero(torch.rand(b, generator=gen) < p).flatten().tolist():
        edge, softness, depth, side = (torch.rand(4, generator=gen) * torch.tensor([1.2, 0.25, 0.45, 1]) + torch.tensor([-0.6, 0.05, 0.3, 0])).tolist()
        ramp = torch.sigmoid((x - edge) / softness * (1 if side < 0.5 else -1))
        out[i] = images[i] * (1 - depth * ramp)
    return out


def occlude(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, p: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """A fraction p of the samples get one rectangle (10-40% of the side) of flat colour or of
    another sample's pixels; labels under it become background: what is hidden is not labelled."""
    b, _, s, _ = images.shape
    images, labels = images.clone(), labels.clone()
    for i in torch.nonzero(torch.rand(b, generator=gen) < p).flatten().tolist():
        w, h = (s * (0.1 + 0.3 * torch.rand(2, generator=gen))).long().tolist()
        x0 = int(torch.randint(0, s - w + 1, (1,), generator=gen))
        y0 = int(torch.randint(0, s - h + 1, (1,), generator=gen))
        if torch.rand(1, generator=gen).item() < 0.5:
            patch = torch.rand(3, 1, 1, generator=gen).expand(3, h, w)
        else:
            j = int(torch.randint(0, b, (1,), generator=gen))
            patch = images[j, :, y0 : y0 + h, x0 : x0 + w].flip(-1)
        images[i, :, y0 : y0 + h, x0 : x0 + w] = patch
        labels[i, y0 : y0 + h, x0 : x0 + w] = 0
    return images, labels


def blur(images: torch.Tensor, gen: torch.Generator, p: float = 0.3, max_sigma: float = 2.0) -> torch.Tensor:
    """Gaussian blur (sigma up to max_sigma pixels of the photo) on a fraction p of the samples."""
    out = images.clone()
    for i in torch.nonzero(torch.rand(len(images), generator=gen) < p).flatten().tolist():
        sigma = 0.5 + (max_sigma - 0.5) * torch.rand(1, generator=gen).item()
        radius = math.ceil(2.5 * sigma)
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-(x**2) / (2 * sigma**2))
        k = (k / k.sum()).to(images.dtype)
        img = F.pad(images[i : i + 1], (radius, radius, radius, radius), mode="replicate")
        img = F.conv2d(img, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        out[i] = F.conv2d(img, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]
    return out


def jpeg(images: torch.Tensor, gen: torch.Generator, p: float = 0.4, quality: tuple[int, int] = (15, 80)) -> torch.Tensor:
    """Re-encodes a fraction p of the samples as JPEG at a random quality: the artefacts of web photos."""
    out = images.clone()
    for i in torch.nonzero(torch.rand(len(images), generator=gen) < p).flatten().tolist():
        q = int(torch.randint(quality[0], quality[1] + 1, (1,), generator=gen))
        pixels = (images[i].permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=q)
        decoded = np.asarray(Image.open(buffer).convert("RGB"))
        out[i] = torch.from_numpy(decoded.copy()).permute(2, 0, 1).float() / 255
    return out


def target_windows(labels: torch.Tensor) -> torch.Tensor:
    """Window per part from pixel labels (B,S,S): (B,P,4) = (ax, bx, ay, by), square in pixels.

    Centre: the part's label centroid (mouth: mean of the centroids of its three classes that
    are present, as the authors do). Half-side: WINDOW_MARGIN / 2 times the part's larger
    bounding-box side.
    """
    b, s, _ = labels.shape
    coords = torch.arange(s, dtype=torch.float32)
    out = torch.zeros(b, len(PARTS), 4)
    for p, part in enumerate(PARTS):
        centres, present = [], []
        mask_any = torch.zeros(b, s, s, dtype=torch.bool)
        for cls in part.classes:
            m = labels == cls
            mask_any |= m
            n = m.sum((1, 2)).float()
            cx = (m.float().sum(1) * coords).sum(1) / n.clamp(min=1)
            cy = (m.float().sum(2) * coords).sum(1) / n.clamp(min=1)
            centres.append(torch.stack([cx, cy], 1))
            present.append(n > 0)
        centres_t, present_t = torch.stack(centres, 1), torch.stack(present, 1).float()
        centre = (centres_t * present_t[..., None]).sum(1) / present_t.sum(1, keepdim=True).clamp(min=1)
        cols, rows = mask_any.any(1), mask_any.any(2)
        width = _extent(cols, coords)
        height = _extent(rows, coords)
        half = (WINDOW_MARGIN * torch.maximum(width, height) / 2).clamp(min=MIN_WINDOW_FRACTION * s / 2)
        missing = present_t.sum(1) == 0
        centre[missing] = (s - 1) / 2
        out[:, p] = torch.stack([half, centre[:, 0], half, centre[:, 1]], 1)
    return out


def present_parts(labels: torch.Tensor) -> torch.Tensor:
    """(B,S,S) labels -> (B,P) bool: the part has at least one pixel (a turned face hides its far eye)."""
    return torch.stack([torch.isin(labels, torch.tensor(part.classes)).flatten(1).any(1) for part in PARTS], 1)


def _extent(occupied: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    big = coords.numel()
    lo = torch.where(occupied, coords, torch.full_like(coords, big)).amin(1)
    hi = torch.where(occupied, coords, torch.full_like(coords, -1)).amax(1)
    return (hi - lo + 1).clamp(min=0)


def jitter_windows(windows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Stage-2 augmentation: the part is not always centred nor at the same scale."""
    b, p, _ = windows.shape
    rnd = lambda: torch.rand(b, p, generator=gen)  # noqa: E731
    half = windows[..., 0] * (0.85 + 0.35 * rnd())
    bx = windows[..., 1] + (rnd() * 2 - 1) * 0.15 * half
    by = windows[..., 3] + (rnd() * 2 - 1) * 0.15 * half
    return torch.stack([half, bx, half, by], -1)


def sample_windows(images: torch.Tensor, labels: torch.Tensor, windows: torch.Tensor, size: int):
    """Batched crops of same-size images: (B,3,S,S), (B,S,S), (B,P,4) -> (B,P,3,n,n), (B,P,n,n).

    Same sampling as geometry.crop_parts (bilinear, align_corners=True, zeros outside), labels
    by nearest.
    """
    b, _, s, _ = images.shape
    p = windows.shape[1]
    u = torch.linspace(-1, 1, size)
    xs = windows[..., 0, None] * u + windows[..., 1, None]  # (B,P,n) pixels
    ys = windows[..., 2, None] * u + windows[..., 3, None]
    gx, gy = 2 * xs / (s - 1) - 1, 2 * ys / (s - 1) - 1
    grid = torch.stack([gx[:, :, None, :].expand(b, p, size, size), gy[:, :, :, None].expand(b, p, size, size)], -1)
    grid = grid.reshape(b, p * size, size, 2)
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    crops = crops.reshape(b, 3, p, size, size).permute(0, 2, 1, 3, 4)
    lab = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
    return crops, lab.reshape(b, p, size, size).long()


def part_targets(label_crops: torch.Tensor) -> list[torch.Tensor]:
    """Full-class label crops (B,P,n,n) -> per part local targets: 0 = background, k = k-th class."""
    out = []
    for p, part in enumerate(PARTS):
        lut = torch.zeros(NUM_CLASSES, dtype=torch.long)
        for k, cls in enumerate(part.classes, start=1):
            lut[cls] = k
        out.append(lut[label_crops[:, p]])
    return out
