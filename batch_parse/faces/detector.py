"""Face detection with five landmarks: the MTCNN cascade run over a batch of photos of any sizes.

Why MTCNN. Measured with `python benchmarks/detector_quality.py --threads 1` on 2,026 Caltech web
photos (3,044 annotated faces, longest side 480), 114 BSDS500 scenes without people and 9 dlib
group photos (43 boxes), on a 2-core CPU shared with another busy job:

    detector (threshold)         recall by eye distance (IOD)       all  eye err  false per  dlib   img/s
                                   <10  10-20  20-40   >=40 px            /IOD  empty scene         1 thread
    MTCNN min_face 20 (0.9)       0.86   0.97   0.98   0.98     0.957   0.047    0.009    42/43  28-39
    MTCNN min_face 20 (0.8)       0.89   0.97   0.98   0.98     0.965   0.048    0.035    42/43
    MTCNN min_face 20 (0.7)       0.91   0.98   0.98   0.98     0.969   0.048    0.070    42/43
    MTCNN min_face 10 (0.9)       0.90   0.97   0.98   0.98     0.960   0.048    0.018    43/43  14
    BlazeFace full range (0.5)    0.52   0.83   0.95   0.94     0.841   0.082    0        41/43  211-239
    BlazeFace short range (0.5)   0.11   0.50   0.94   0.99     0.662   0.097    0.053    11/43  580-620

MTCNN finds the small faces of group and crowd photos that BlazeFace misses, gives the five points
alignment needs (BlazeFace has no mouth corners) with eyes ~1.7x closer to the annotations, and
its weights are MIT, read from a wheel installed without its dependencies; BlazeFace (Apache-2.0)
needs mediapipe, whose numpy<2 / protobuf<5 pins keep it to training (the teacher). MTCNN is
6-20x slower on CPU: 28-39 photos/s on one thread (BlazeFace on its own threads). With
torch.set_num_threads(2) on this box it ran at 2.3-2.5 photos/s (`--threads 2 --limit 300
--caltech-only --min-faces 20`): OpenMP threads spinning against the other job, as elsewhere in
this project, so CPU workers on a busy machine should use one thread. DEFAULT_THRESHOLD 0.9: from
0.8 it costs 0.8 points of recall (18 of the 25 faces lost are under 10 px IOD, too small to
parse) and cuts false detections on people-free scenes from 4 to 1 in 114. min_face 10 adds 4
points on those tiny faces at half the speed (and 2 false detections instead of 1), so 20 stays
the default.
"False detections" on Caltech (0.14 per photo at 0.9) are mostly real faces nobody annotated: of
89 looked at (every third photo), about 5 were not faces.

The cascade: an image pyramid (each level 0.709 of the one before, the first at 12/min_face so
the smallest wanted face fills P-Net's 12 px window) goes through P-Net, whose proposals are
merged by NMS, squared and cropped to 24x24 for R-Net, then again to 48x48 for O-Net, which gives
the final score, box and landmarks. R-Net and O-Net run once per call on the crops of all photos.

Coordinates: pixel-index coordinates, as in batch_parse.faces.align (pixel (row i, column j) has
its centre at x=j, y=i), so a box around the whole of a WxH photo is [-0.5, -0.5, W-0.5, H-0.5].
Boxes may reach past the photo's border when the face does. On mirrored photos the landmarks come
back mirror-symmetric within 0.2 px; the boxes sit 1-3% of their width to the left (O-Net's own
box regression does this; facenet-pytorch's cascade shows it too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from batch_parse.faces import mtcnn
from batch_parse.faces.policy import DEFAULT_DETECTOR, DETECTOR_DEFAULTS, DETECTORS

# The detectors known and their defaults live in policy.py (torch-free, so a job spec is checked
# without loading torch); MTCNN's are the ones measured above.
# min_face is the side of the smallest P-Net window searched, in photo pixels; a window holds a
# face with some margin, so detected boxes come out down to about 0.4 x min_face.
DEFAULT_MIN_FACE = DETECTOR_DEFAULTS["mtcnn"].min_face
DEFAULT_THRESHOLD = DETECTOR_DEFAULTS["mtcnn"].threshold  # O-Net score; see "Why MTCNN" above
PYRAMID_FACTOR = 0.709  # each level's side over the last: about 1/sqrt(2), two levels per octave
PNET_THRESHOLD = 0.6
RNET_THRESHOLD = 0.7
# NMS overlaps: P-Net windows within one pyramid level, then across levels; R-Net; O-Net (by
# intersection over the smaller box, which also drops a box nested in a larger face's box).
NMS_PNET_LEVEL, NMS_PNET, NMS_RNET, NMS_ONET_MIN = 0.5, 0.7, 0.7, 0.7
# The first (largest) P-Net input is capped at this many pixels, which bounds P-Net's time and
# memory: a 12 MP photo at min_face 20 would otherwise need a 4.3 MP first level. Below the cap
# the smallest face found is min_face; above it (photos over 4.4 MP at min_face 20) the pyramid
# starts lower and the smallest face found is 12 * sqrt(H*W / MAX_PNET_PIXELS) px: 33 px in a
# 4000x3000 photo, about 1.1% of its shorter side.
MAX_PNET_PIXELS = 1536 * 1024
# Proposals kept per photo after P-Net, best first. Busy textures (foliage, crowds) can give
# thousands; R-Net rejects almost all of them, and a face's proposals score near the top.
MAX_PROPOSALS = 2000
CROP_BATCH = 512  # R-Net / O-Net crops per forward pass, to bound memory
# Black border (fraction of each side) of the second look at a photo where no face was found.
# On 200 tight UTKFace test crops, faces missed at the default threshold: 26 without a border, 18
# with 0.1, 12 with 0.2, 6 with 0.3 (edge-replicated borders did worse: 19 / 15 / 11). On the
# benchmark above it changes nothing else: Caltech recall 0.958 with it vs 0.957 without, false
# detections on people-free scenes 0.009 both, 23.8 vs 27.2 photos/s (`--min-faces 20
# --thresholds 0.9 --no-mediapipe [--no-pad-retry]`, load 2.7-4.8).
RETRY_BORDER = 0.3


@dataclass
class Detections:
    """One photo's faces, largest box first."""

    boxes: np.ndarray  # (K,4) float32 [x0, y0, x1, y1], pixel-index coordinates (module docstring)
    landmarks: np.ndarray  # (K,5,2) float32 (x, y): eye image-left, eye image-right, nose tip, mouth corner image-left, image-right
    scores: np.ndarray  # (K,) float32 O-Net face probability, 0..1

    def largest(self) -> Detections:
        """Only the largest face (`--faces largest`); empty stays empty."""
        return Detections(self.boxes[:1], self.landmarks[:1], self.scores[:1])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32))


class DetectorError(ValueError):
    """A detector that cannot be made or an input it cannot take, in one line."""


class FaceDetector:
    """MTCNN with its three networks on one device; `detect` takes a list of RGB uint8 photos."""

    def __init__(self, nets: tuple[mtcnn.PNet, mtcnn.RNet, mtcnn.ONet], device: torch.device) -> None:
        self.name = "mtcnn"
        self.device = device
        self.pnet, self.rnet, self.onet = nets

    @torch.inference_mode()
    def detect(self, images: list[np.ndarray], min_face: int = DEFAULT_MIN_FACE, threshold: float = DEFAULT_THRESHOLD,
               pad_retry: bool = True) -> list[Detections]:
        """Faces in each photo (RGB uint8, HxWx3, any sizes) with O-Net score >= threshold.

        min_face: the smallest face searched for, as P-Net's window in photo pixels (boxes come out
        down to ~0.4x it, see DEFAULT_MIN_FACE); raised for photos over MAX_PNET_PIXELS.
        pad_retry: a photo with no face is searched once more inside a black border (RETRY_BORDER
        of its size on each side): a face cut by the frame (a tight crop) scores low in MTCNN's
        windows, which were trained on faces with context.
        """
        if min_face < 1:
            raise DetectorError(f"min_face must be >= 1, got {min_face}")
        if not images:
            return []
        results = self._detect_once(images, min_face, threshold)
        missing = [i for i, found in enumerate(results) if len(found.scores) == 0] if pad_retry else []
        if missing:
            borders = [(round(RETRY_BORDER * images[i].shape[1]), round(RETRY_BORDER * images[i].shape[0])) for i in missing]
            padded = [np.pad(images[i], ((by, by), (bx, bx), (0, 0))) for i, (bx, by) in zip(missing, borders)]
            for i, (bx, by), found in zip(missing, borders, self._detect_once(padded, min_face, threshold)):
                shift = np.array([bx, by], np.float32)
                results[i] = Detections(found.boxes - np.tile(shift, 2), found.landmarks - shift, found.scores)
        return results

    def _detect_once(self, images: list[np.ndarray], min_face: int, threshold: float) -> list[Detections]:
        photos = [_Photo(_as_tensor(image, index, self.device), min_face) for index, image in enumerate(images)]

        # Stage 1, per photo: P-Net proposals over the pyramid, squared.
        boxes, owners = [], []
        for index, photo in enumerate(photos):
            found = self._propose(photo)
            boxes.append(found)
            owners.append(np.full(len(found), index))
        boxes, owners = np.concatenate(boxes), np.concatenate(owners)

        # Stage 2, all photos at once: R-Net on 24x24 crops.
        if len(boxes):
            scores, offsets = _run_batched(self.rnet, _crops(photos, boxes, owners, mtcnn.RNET_SIZE))
            keep = scores >= RNET_THRESHOLD
            boxes, owners, scores, offsets = boxes[keep], owners[keep], scores[keep], offsets[keep]
            keep = _nms(boxes, scores, NMS_RNET, groups=owners)
            boxes = _square(_regress(boxes[keep], offsets[keep]))
            owners = owners[keep]

        # Stage 3, all photos at once: O-Net on 48x48 crops gives the final score, box and landmarks.
        points = np.zeros((0, 5, 2), np.float32)
        scores = np.zeros(0, np.float32)
        if len(boxes):
            scores, offsets, fractions = _run_batched(self.onet, _crops(photos, boxes, owners, mtcnn.ONET_SIZE))
            keep = scores >= threshold
            boxes, owners, scores, offsets, fractions = boxes[keep], owners[keep], scores[keep], offsets[keep], fractions[keep]
            # Landmarks are fractions of the box O-Net saw, before its own box correction.
            points = boxes[:, None, :2] + fractions * (boxes[:, None, 2:] - boxes[:, None, :2])
            boxes = _regress(boxes, offsets)
            keep = _nms(boxes, scores, NMS_ONET_MIN, groups=owners, by_min=True)
            boxes, owners, scores, points = boxes[keep], owners[keep], scores[keep], points[keep]

        results = []
        for index in range(len(photos)):
            mine = np.flatnonzero(owners == index)
            if not len(mine):
                results.append(Detections.empty())
                continue
            area = (boxes[mine, 2] - boxes[mine, 0]) * (boxes[mine, 3] - boxes[mine, 1])
            mine = mine[np.argsort(-area, kind="stable")]
            # Internally x runs over pixel edges (pixel j spans [j, j+1)); callers get pixel centres at integers.
            results.append(
                Detections(
                    boxes=(boxes[mine] - 0.5).astype(np.float32),
                    landmarks=(points[mine] - 0.5).astype(np.float32),
                    scores=scores[mine].astype(np.float32),
                )
            )
        return results

    def _propose(self, photo: _Photo) -> np.ndarray:
        """(N,4) squared P-Net proposals in photo pixels (edge coordinates), best first."""
        windows, scores, offsets = [], [], []
        for level in photo.pnet_levels:
            probs, level_offsets = self.pnet(_normalise(level.pixels[None].float()).contiguous(memory_format=torch.channels_last))
            rows, cols = torch.nonzero(probs[0] >= PNET_THRESHOLD, as_tuple=True)
            if not len(rows):
                continue
            level_scores = probs[0, rows, cols].cpu().numpy()
            # Each output cell sees a 12x12 window at twice its index in the level's pixels.
            x0 = cols.cpu().numpy() * mtcnn.PNET_STRIDE / level.scale_x
            y0 = rows.cpu().numpy() * mtcnn.PNET_STRIDE / level.scale_y
            level_windows = np.stack([x0, y0, x0 + mtcnn.PNET_CELL / level.scale_x, y0 + mtcnn.PNET_CELL / level.scale_y], axis=1)
            keep = _nms(level_windows, level_scores, NMS_PNET_LEVEL)
            windows.append(level_windows[keep])
            scores.append(level_scores[keep])
            offsets.append(level_offsets[0, :, rows, cols].T.cpu().numpy()[keep])
        if not windows:
            return np.zeros((0, 4), np.float32)
        windows, scores, offsets = np.concatenate(windows), np.concatenate(scores), np.concatenate(offsets)
        keep = _nms(windows, scores, NMS_PNET)[:MAX_PROPOSALS]
        return _square(_regress(windows[keep], offsets[keep]))


@dataclass
class _Level:
    pixels: torch.Tensor  # (3,h,w) uint8: a batch of large photos keeps its pyramids until O-Net
    scale_x: float  # level width / photo width
    scale_y: float


class _Photo:
    """One photo on the device and its pyramid: P-Net's levels, and the levels crops are sampled from."""

    def __init__(self, pixels: torch.Tensor, min_face: int) -> None:
        self.pixels = pixels  # (3,H,W) uint8
        height, width = pixels.shape[1:]
        self.width, self.height = width, height
        scale = min(mtcnn.PNET_CELL / min_face, (MAX_PNET_PIXELS / max(1, height * width)) ** 0.5)
        self.pnet_levels: list[_Level] = []
        source = pixels.float()
        while min(height, width) * scale >= mtcnn.PNET_CELL:
            size = (max(mtcnn.PNET_CELL, round(height * scale)), max(mtcnn.PNET_CELL, round(width * scale)))
            # Each level from the one before: cheaper than from the photo, and antialiased either way.
            source = _resize(source, size)
            self.pnet_levels.append(_Level(_to_uint8(source), size[1] / width, size[0] / height))
            scale *= PYRAMID_FACTOR
        self._sources: list[_Level] | None = None

    def sources(self) -> list[_Level]:
        """Levels to sample crops from, largest first: the photo itself, then P-Net's levels below it,
        with extra ones where the gap to the next is more than 2x, so bilinear crops do not alias."""
        if self._sources is None:
            levels = [_Level(self.pixels, 1.0, 1.0)]
            below = [level for level in self.pnet_levels if level.scale_x < 1.0]
            for level in below:
                while levels[-1].scale_x * 0.5 > level.scale_x:
                    top = levels[-1]
                    size = (round(top.pixels.shape[1] * PYRAMID_FACTOR), round(top.pixels.shape[2] * PYRAMID_FACTOR))
                    levels.append(_Level(_to_uint8(_resize(top.pixels.float(), size)), size[1] / self.width, size[0] / self.height))
                levels.append(level)
            self._sources = levels
        return self._sources


def _as_tensor(image: np.ndarray, index: int, device: torch.device) -> torch.Tensor:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise DetectorError(f"image {index}: expected an RGB uint8 array of shape (H, W, 3), got {got}")
    if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on read-only arrays
        image = image.copy()
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)


def _resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(pixels[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def _to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.round().clamp(0, 255).to(torch.uint8)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - mtcnn.PIXEL_MEAN) * mtcnn.PIXEL_SCALE


def _crops(photos: list[_Photo], boxes: np.ndarray, owners: np.ndarray, size: int) -> torch.Tensor:
    """(N,3,size,size) normalised crops of the (square) boxes, black beyond the photo's border.

    Each crop is sampled bilinearly from the smallest pyramid level that still has at least `size`
    pixels across the box, so it is shrunk by at most 2x in that step (little aliasing), and one
    grid_sample per level serves all its boxes.
    """
    device = photos[0].pixels.device
    out = torch.zeros((len(boxes), 3, size, size), device=device)
    steps = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    for index, photo in enumerate(photos):
        mine = np.flatnonzero(owners == index)
        if not len(mine):
            continue
        sources = photo.sources()
        scales = np.array([level.scale_x for level in sources])
        wanted = size / np.maximum(boxes[mine, 2] - boxes[mine, 0], 1e-3)
        # scales fall with the index: the last level whose scale still covers what the box needs.
        choice = np.clip(np.searchsorted(-scales, -wanted, side="right") - 1, 0, len(sources) - 1)
        for level_index in np.unique(choice):
            picked = mine[choice == level_index]
            box = torch.as_tensor(boxes[picked], dtype=torch.float32, device=device)
            # grid_sample's -1..1 spans the level's full extent, which is the photo's, at any level.
            xs = (box[:, :1] + steps * (box[:, 2:3] - box[:, :1])) * (2 / photo.width) - 1
            ys = (box[:, 1:2] + steps * (box[:, 3:4] - box[:, 1:2])) * (2 / photo.height) - 1
            grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
            # All boxes of a level as one tall grid: one call instead of one per box.
            sampled = F.grid_sample(
                sources[level_index].pixels[None].float(), grid.reshape(1, -1, size, 2), mode="bilinear", padding_mode="zeros", align_corners=False
            )
            out[torch.as_tensor(picked, device=device)] = sampled[0].view(3, len(picked), size, size).transpose(0, 1)
    return _normalise(out)


def _run_batched(net: torch.nn.Module, crops: torch.Tensor) -> tuple[np.ndarray, ...]:
    crops = crops.contiguous(memory_format=torch.channels_last)
    outputs = [net(crops[start : start + CROP_BATCH]) for start in range(0, len(crops), CROP_BATCH)]
    return tuple(torch.cat(parts).float().cpu().numpy() for parts in zip(*outputs))


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by the networks' offsets, which are in units of the box's width and height."""
    size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    return (boxes + offsets * size).astype(np.float32)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Squares with the boxes' centres and the longer of their sides: the R-Net and O-Net input is square."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray | None = None, by_min: bool = False) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    A box is dropped when it overlaps a better kept box of the same group by more than
    `threshold`: intersection over union, or over the smaller box's area when by_min.
    """
    if groups is not None and len(boxes):
        # Groups (photos) never overlap once each is shifted right past all the others.
        span = float(boxes[:, 2].max() - boxes[:, 0].min()) + 1
        boxes = boxes + (groups * span)[:, None] * np.array([1, 0, 1, 0], np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0])
        height = np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1])
        inter = np.clip(width, 0, None) * np.clip(height, 0, None)
        base = np.minimum(area[best], area[rest]) if by_min else area[best] + area[rest] - inter
        order = rest[inter <= threshold * base]
    return np.array(keep, dtype=np.int64)


def load_detector(name: str = DEFAULT_DETECTOR, device: str | None = None) -> FaceDetector:
    """A face detector by name on `device` (None or "auto": CUDA when available, else CPU)."""
    if name not in DETECTORS:
        raise DetectorError(f"unknown face detector {name!r}; known: {', '.join(DETECTORS)}")
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise DetectorError(f"bad device {device!r}: {exc}") from None
    paths = mtcnn.weight_paths()
    if paths is None:
        raise DetectorError(f"the MTCNN weights are not installed; install them with: {mtcnn.INSTALL_COMMAND}")
    return FaceDetector(mtcnn.load_networks(paths, device), device)
