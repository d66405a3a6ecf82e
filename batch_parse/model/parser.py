"""The inference API everything else uses: load a parser by name or path, parse a batch of images.

    parser = load_parser("stn-icnn/default")           # or a path to a .safetensors file
    results = parser.parse([rgb_uint8_hwc, ...])       # any sizes, mixed in one batch

Data contract between the stages of `parse` (batch-first, as in facer):
    images        list of (3,H_i,W_i) uint8 on the device
    stage1_input  (N,3,128,128) float 0..1
    stage1_probs  (N,9,128,128) softmax of stage-1 logits
    theta         (N,6,2,3) localiser output in frame coordinates (geometry.py)
    windows       (N,6,4) float64 (ax,bx,ay,by) in each image's pixels
    crops         (N,6,3,81,81) float 0..1
    part_probs    6 x (N,1+classes,81,81) stage-2 softmax, PARTS order
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from batch_parse.labels import CLASS_NAMES, NUM_CLASSES, PART_NAMES
from batch_parse.model import face_search, geometry
from batch_parse.model.fuse import optimize_for_inference
from batch_parse.model.stn_icnn import STNiCNN
from batch_parse.model.weights import file_sha256, load_weights, resolve


@dataclass
class FaceParse:
    """One image's result. Arrays are numpy; boxes and confidences follow labels.PARTS order."""

    label_map: np.ndarray  # (H,W) uint8 class indices (labels.CLASS_NAMES)
    boxes: np.ndarray  # (6,4) float32 [x0,y0,x1,y1] in original pixels
    confidences: np.ndarray  # (6,) float32, mean max-probability over the part's own pixels
    class_pixels: np.ndarray  # (9,) int64 pixel count per class

    class_names = CLASS_NAMES
    part_names = PART_NAMES


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FaceParser:
    def __init__(self, model: STNiCNN, name: str, weights_sha256: str, device: str | None = None, precision: str = "auto"):
        self.device = pick_device(device)
        self.model = model.eval()  # as loaded, for inspection
        self._net = optimize_for_inference(model).to(self.device)  # what runs
        self.cfg = model.cfg
        self.model_name = name
        self.weights_sha256 = weights_sha256
        # Reduced precision only on GPU, where it pays; CPU stays float32 (bf16 is slower there).
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = precision

    @property
    def model_version(self) -> str:
        return f"{self.model_name}@{self.weights_sha256[:8]}"

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def parse(self, images: list[np.ndarray]) -> list[FaceParse]:
        """RGB uint8 (H,W,3) arrays of any sizes -> one FaceParse each."""
        results = self._parse_once(images)
        if self.cfg.refine_small_faces > 0:
            regions = {i: refine_region(r.boxes, im.shape[1], im.shape[0], self.cfg.refine_small_faces)
                       for i, (im, r) in enumerate(zip(images, results))}
            self._parse_crops(images, results, [(i, box) for i, box in regions.items() if box is not None], always=True)
        if self.cfg.search_below > 0:
            self._search(images, results)
        return results

    def _search(self, images: list[np.ndarray], results: list[FaceParse]) -> None:
        """Replace unsure results by the most confident parse of a face found on a larger view."""
        unsure = [i for i, r in enumerate(results) if mean_confidence(r) < self.cfg.search_below]
        for size in self.cfg.search_sizes:  # coarse to fine: most faces are found by the first
            if not unsure:
                return
            # The photo as the "square" stage-1 input at a larger size, whatever geometry the
            # weights use: candidate_crops maps that view back to the photo.
            view = dataclasses.replace(self.cfg, geometry="square", stage1_resize="antialias", stage1_size=size)
            with torch.inference_mode(), self._autocast():
                views = torch.stack([geometry.stage1_input(self._tensor(images[i]), view) for i in unsure])
                probs = self._net.stage1(views.contiguous(memory_format=torch.channels_last)).float().softmax(1)
            crops = [(i, box) for i, p in zip(unsure, probs) for box in face_search.candidate_crops(p.cpu(), images[i].shape[1], images[i].shape[0])]
            self._parse_crops(images, results, crops, always=False)
            unsure = [i for i in unsure if mean_confidence(results[i]) < self.cfg.search_below]

    def _parse_crops(self, images: list[np.ndarray], results: list[FaceParse], crops: list[tuple[int, tuple[int, int, int, int]]], always: bool) -> None:
        """Parse crops (image index, box) and put them in place of the results they came from:
        always, or only where more confident than the current result."""
        if not crops:
            return
        parsed = self._parse_once([images[i][y0:y1, x0:x1] for i, (x0, y0, x1, y1) in crops])
        for (i, (x0, y0, _, _)), r in zip(crops, parsed):
            if always or mean_confidence(r) > mean_confidence(results[i]):
                results[i] = _place(r, x0, y0, images[i].shape[1], images[i].shape[0])

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        """(H,W,3) uint8 numpy -> (3,H,W) uint8 tensor on the device."""
        # np.array(copy) only when needed: torch refuses to wrap read-only arrays (e.g. from PIL) silently.
        array = image if image.flags.writeable and image.flags.c_contiguous else np.array(image)
        return torch.from_numpy(array).to(self.device).permute(2, 0, 1)

    @torch.inference_mode()
    def _parse_once(self, images: list[np.ndarray]) -> list[FaceParse]:
        if not images:
            return []
        tensors = [self._tensor(im) for im in images]
        sizes = [(t.shape[2], t.shape[1]) for t in tensors]
        x = torch.stack([geometry.stage1_input(t, self.cfg) for t in tensors]).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            stage1_probs = self._net.stage1(x).float().softmax(1)
            theta = self._net.localise(stage1_probs).float()
        windows = geometry.theta_to_windows(theta, sizes, self.cfg)
        crops = torch.stack([geometry.crop_parts(t, w, self.cfg.part_size) for t, w in zip(tensors, windows)])
        with self._autocast():
            part_probs = [y.float().softmax(1) for y in self._net.parse_parts(crops)]
        boxes = geometry.window_boxes(windows).float().numpy()
        confidences = part_confidences(part_probs).cpu().numpy()
        results = []
        for i, (w, h) in enumerate(sizes):
            labels = geometry.label_map([p[i] for p in part_probs], windows[i], w, h, self.cfg.paste_mode)
            counts = torch.bincount(labels.flatten().long(), minlength=NUM_CLASSES).cpu().numpy()
            results.append(FaceParse(labels.cpu().numpy(), boxes[i], confidences[i], counts))
        return results


def refine_region(boxes: np.ndarray, width: int, height: int, below: float) -> tuple[int, int, int, int] | None:
    """Square crop (x0, y0, x1, y1), clipped to the image, around a face that came out small."""
    x0, y0 = max(0.0, boxes[:, 0].min()), max(0.0, boxes[:, 1].min())
    x1, y1 = min(float(width), boxes[:, 2].max()), min(float(height), boxes[:, 3].max())
    side = max(x1 - x0, y1 - y0)
    if side <= 0 or side >= below * max(width, height):
        return None
    return face_search.face_crop((x0 + x1) / 2, (y0 + y1) / 2, side, width, height)


def _place(crop_result: FaceParse, x0: int, y0: int, width: int, height: int) -> FaceParse:
    """A result on a crop, put back into the full image's coordinates."""
    h, w = crop_result.label_map.shape
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[y0 : y0 + h, x0 : x0 + w] = crop_result.label_map
    counts = crop_result.class_pixels.copy()
    counts[0] += width * height - w * h
    boxes = crop_result.boxes + np.array([x0, y0, x0, y0], dtype=np.float32)
    return FaceParse(labels, boxes, crop_result.confidences, counts)


def mean_confidence(result: FaceParse) -> float:
    """One number per parse: the mean of its six part confidences (a missing part counts 0)."""
    return float(result.confidences.mean())


def part_confidences(part_probs: list[torch.Tensor]) -> torch.Tensor:
    """(N,6): per part, the mean max-probability over the crop pixels it labels foreground.

    0 when the part labels no pixel at all (the part was not found in its window).
    """
    out = []
    for probs in part_probs:
        top, arg = probs.max(1)
        fg = (arg > 0).float()
        out.append((top * fg).sum((1, 2)) / fg.sum((1, 2)).clamp(min=1))
    return torch.stack(out, 1)


def load_parser(name_or_path: str = "stn-icnn/default", device: str | None = None, precision: str = "auto") -> FaceParser:
    """A ready FaceParser from a registry name (e.g. "stn-icnn/default") or a .safetensors path."""
    name, path = resolve(name_or_path)
    model, _ = load_weights(path)
    return FaceParser(model, name, file_sha256(path), device=device, precision=precision)
