"""Where the model looks: stage-1 input, part windows, cropping and pasting back.

Coordinates. The localiser predicts, per part, theta = [[sx, 0, tx], [0, sy, ty]] mapping the
81x81 crop's normalised coordinates u, v in [-1, 1] (align_corners=True) to a *frame*'s
normalised coordinates. Each image has a frame (see ModelConfig.geometry) given per axis by an
affine map to original pixel coordinates, pixel = k * frame + c. Composing the two gives a
part *window* in original pixels:

    x = ax * u + bx,    y = ay * v + by       (windows[..., :] = ax, bx, ay, by)

Everything after the localiser works on windows, in each image's own pixels, so images of any
size mix in one batch and nothing is ever padded to a 1024 canvas.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from batch_parse.labels import BACKGROUND, NUM_PART_CLASSES, PARTS, SKIN
from batch_parse.model.config import ModelConfig


def frame_affine(width: int, height: int, cfg: ModelConfig) -> tuple[float, float, float, float]:
    """(kx, cx, ky, cy) with pixel = k * frame_normalised + c, per axis."""
    if cfg.geometry == "authors":
        # The authors' 1024x1024 canvas with the image centred (floor on the left/top).
        half = (cfg.canvas_size - 1) / 2
        left, top = (cfg.canvas_size - width) // 2, (cfg.canvas_size - height) // 2
        return half, half - left, half, half - top
    (w, h), (ox, oy) = square_placement(width, height, cfg.stage1_size)
    n = cfg.stage1_size / 2
    # Pixel centres of the n*2 stage-1 grid (align_corners=False) mapped back to the original.
    kx, ky = n * width / w, n * height / h
    return kx, (n - ox) * width / w - 0.5, ky, (n - oy) * height / h - 0.5


def square_placement(width: int, height: int, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Size and offset of the image, aspect kept, inside a size x size square."""
    side = max(width, height)
    w = max(1, round(size * width / side))
    h = max(1, round(size * height / side))
    return (w, h), ((size - w) // 2, (size - h) // 2)


def stage1_input(image: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """uint8 (3,H,W) -> float (3,S,S) in 0..1: what stage 1 sees."""
    s = cfg.stage1_size
    if cfg.geometry == "square":
        (w, h), (ox, oy) = square_placement(image.shape[2], image.shape[1], s)
    else:
        (w, h), (ox, oy) = (s, s), (0, 0)
    x = image.unsqueeze(0).float().div_(255)  # in place: a 12 MP photo is 144 MB as float
    if cfg.stage1_resize == "authors":
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
        # Their loader goes back through an 8-bit PIL image: truncation, not rounding.
        x = torch.floor(x * 255) / 255
    else:
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return F.pad(x, (ox, s - w - ox, oy, s - h - oy))[0]


def theta_to_windows(theta: torch.Tensor, sizes: list[tuple[int, int]], cfg: ModelConfig) -> torch.Tensor:
    """theta (N,P,2,3) -> windows (N,P,4) float64 = (ax, bx, ay, by) in each image's pixels."""
    t = theta.detach().double().cpu()
    frames = torch.tensor([frame_affine(w, h, cfg) for w, h in sizes], dtype=torch.float64)
    kx, cx, ky, cy = (frames[:, i : i + 1] for i in range(4))
    return torch.stack([kx * t[..., 0, 0], kx * t[..., 0, 2] + cx, ky * t[..., 1, 1], ky * t[..., 1, 2] + cy], dim=-1)


def windows_to_theta(windows: torch.Tensor, sizes: list[tuple[int, int]], cfg: ModelConfig) -> torch.Tensor:
    """Inverse of theta_to_windows: (N,P,4) -> theta (N,P,2,3) float32 (training targets)."""
    frames = torch.tensor([frame_affine(w, h, cfg) for w, h in sizes], dtype=torch.float64)
    kx, cx, ky, cy = (frames[:, i : i + 1] for i in range(4))
    ax, bx, ay, by = windows.double().unbind(-1)
    zero = torch.zeros_like(ax)
    rows = [torch.stack([ax / kx, zero, (bx - cx) / kx], -1), torch.stack([zero, ay / ky, (by - cy) / ky], -1)]
    return torch.stack(rows, dim=-2).float()


def window_boxes(windows: torch.Tensor) -> torch.Tensor:
    """(...,4) windows -> (...,4) boxes [x0, y0, x1, y1] in pixels (mirrored windows included)."""
    ax, bx, ay, by = windows.unbind(-1)
    return torch.stack([bx - ax.abs(), by - ay.abs(), bx + ax.abs(), by + ay.abs()], dim=-1)


def _crop_grid(n: int, device: torch.device) -> torch.Tensor:
    return torch.linspace(-1, 1, n, dtype=torch.float64, device=device)


def crop_parts(image: torch.Tensor, windows: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear crops of one image: uint8 (3,H,W), windows (P,4) -> float (P,3,size,size) in 0..1.

    Only the pixels under each window are converted to float, so a 50 MP photo costs no more
    memory than a small one. Outside the image the crop is zero (as the authors' padded canvas).
    """
    _, height, width = image.shape
    u = _crop_grid(size, image.device)
    crops = []
    for ax, bx, ay, by in windows.tolist():
        xs, ys = ax * u + bx, ay * u + by  # sampling positions in pixels, float64
        x0 = max(0, math.floor(xs.min().item()) - 1)
        x1 = min(width - 1, math.ceil(xs.max().item()) + 1)
        y0 = max(0, math.floor(ys.min().item()) - 1)
        y1 = min(height - 1, math.ceil(ys.max().item()) + 1)
        if x1 <= x0 or y1 <= y0:  # window entirely off the image
            crops.append(torch.zeros(3, size, size, device=image.device))
            continue
        roi = image[:, y0 : y1 + 1, x0 : x1 + 1].unsqueeze(0).float().div_(255)
        gx = 2 * (xs - x0) / (x1 - x0) - 1
        gy = 2 * (ys - y0) / (y1 - y0) - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).float().unsqueeze(0)
        crops.append(F.grid_sample(roi, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0])
        del roi  # never hold two float copies of a large photo
    return torch.stack(crops)


def paste_back(
    part_probs: list[torch.Tensor], windows: torch.Tensor, x0: int, y0: int, width: int, height: int, mode: str = "nearest"
) -> torch.Tensor:
    """Part softmaxes -> 9-channel (part classes) probabilities over the pixel rectangle [x0, x0+w) x [y0, y0+h).

    part_probs[p]: (1 + len(PARTS[p].classes), S, S). Foreground channels land on their class;
    background is the product over parts of (1 - sampled(1 - bg_p)), 1 outside every window
    (the authors' mapback). Each part is sampled only over its own box.
    """
    device = part_probs[0].device
    out = torch.zeros(NUM_PART_CLASSES, height, width, device=device)
    background = torch.ones(height, width, device=device)
    size = part_probs[0].shape[-1]
    margin = 2.0 / (size - 1)  # one crop pixel of slack around the box for the sampling support
    for part, probs, (ax, bx, ay, by) in zip(PARTS, part_probs, windows.tolist()):
        px0 = max(x0, math.floor(bx - abs(ax) * (1 + margin)) - 1)
        px1 = min(x0 + width, math.ceil(bx + abs(ax) * (1 + margin)) + 2)
        py0 = max(y0, math.floor(by - abs(ay) * (1 + margin)) - 1)
        py1 = min(y0 + height, math.ceil(by + abs(ay) * (1 + margin)) + 2)
        if px1 <= px0 or py1 <= py0 or ax == 0 or ay == 0:
            continue
        gx = (torch.arange(px0, px1, dtype=torch.float64, device=device) - bx) / ax
        gy = (torch.arange(py0, py1, dtype=torch.float64, device=device) - by) / ay
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).float().unsqueeze(0)
        # Sample (1 - bg) so that outside the window (zero padding) the factor is exactly 1.
        fields = torch.cat([1 - probs[:1], probs[1:]]).unsqueeze(0).float()
        sampled = F.grid_sample(fields, grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
        ys, xs = slice(py0 - y0, py1 - y0), slice(px0 - x0, px1 - x0)
        background[ys, xs] *= 1 - sampled[0]
        for channel, cls in enumerate(part.classes, start=1):
            out[cls, ys, xs] = sampled[channel]
    out[0] = background
    return out


def label_map(
    part_probs: list[torch.Tensor], windows: torch.Tensor, width: int, height: int, mode: str = "nearest", tile: int = 512
) -> torch.Tensor:
    """(H,W) uint8 class indices; only the windows' area is evaluated, tile by tile."""
    device = part_probs[0].device
    labels = torch.zeros(height, width, dtype=torch.uint8, device=device)
    boxes = window_boxes(windows)
    pad = 2 + boxes.new_tensor(2.0 / (part_probs[0].shape[-1] - 1)) * windows[:, [0, 2]].abs().max()
    x0 = max(0, math.floor(boxes[:, 0].min().item() - pad.item()))
    y0 = max(0, math.floor(boxes[:, 1].min().item() - pad.item()))
    x1 = min(width, math.ceil(boxes[:, 2].max().item() + pad.item()))
    y1 = min(height, math.ceil(boxes[:, 3].max().item() + pad.item()))
    for ty in range(y0, y1, tile):
        for tx in range(x0, x1, tile):
            w, h = min(tile, x1 - tx), min(tile, y1 - ty)
            probs = paste_back(part_probs, windows, tx, ty, w, h, mode)
            # argmax takes the first index on ties, as the authors' does.
            labels[ty : ty + h, tx : tx + w] = probs.argmax(0).to(torch.uint8)
    return labels


# Stage 1's face region: where its background probability, upsampled, is below this. Its complement
# inside the face outline is what stage 1 gives; the parts inside it are stage 2's (add_skin).
FACE_REGION_BELOW = 0.5


def add_skin(labels: torch.Tensor, stage1_probs: torch.Tensor, width: int, height: int, cfg: ModelConfig) -> torch.Tensor:
    """labels (H,W) uint8 from stage 2's part windows -> the same map with skin filled in, in place.

    STN-iCNN's split of work: the large, coarse region (the face's skin) comes from stage 1 at
    128x128, the fine parts from stage 2 at full resolution. A pixel becomes skin where stage 2
    says background and stage 1 says face (skin or any part: background probability below
    FACE_REGION_BELOW), so the skin reaches exactly to the edges stage 2 drew. stage1_probs
    (C,S,S) is this image's stage-1 softmax; it is sampled bilinearly at every pixel centre
    through the frame's affine map, only over the face region's bounding box.
    """
    s = cfg.stage1_size
    face = stage1_probs[BACKGROUND] < FACE_REGION_BELOW
    if not face.any():
        return labels
    kx, cx, ky, cy = frame_affine(width, height, cfg)
    rows, cols = face.any(1).nonzero()[:, 0], face.any(0).nonzero()[:, 0]

    def span(lo: int, hi: int, k: float, c: float, size: int) -> tuple[int, int]:
        # Stage-1 cell centres j map to frame (2j+1)/s - 1; one cell of slack for the bilinear support.
        a, b = k * ((2 * (lo - 1) + 1) / s - 1) + c, k * ((2 * (hi + 1) + 1) / s - 1) + c
        return max(0, math.floor(a)), min(size, math.ceil(b) + 1)

    x0, x1 = span(cols.min().item(), cols.max().item(), kx, cx, width)
    y0, y1 = span(rows.min().item(), rows.max().item(), ky, cy, height)
    if x1 <= x0 or y1 <= y0:
        return labels
    gx = (torch.arange(x0, x1, dtype=torch.float64, device=labels.device) - cx) / kx
    gy = (torch.arange(y0, y1, dtype=torch.float64, device=labels.device) - cy) / ky
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).float().unsqueeze(0)
    # Outside stage 1's square the photo is padding: background (border value 1 there).
    bg = F.grid_sample(stage1_probs[None, BACKGROUND : BACKGROUND + 1].float() - 1, grid.to(stage1_probs.device),
                       mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0] + 1
    region = labels[y0:y1, x0:x1]
    region[(bg < FACE_REGION_BELOW) & (region == BACKGROUND)] = SKIN
    return labels
