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
from dataclasses import dataclass

import numpy as np
import torch

from batch_parse.labels import CLASS_NAMES, NUM_CLASSES, PART_NAMES
from batch_parse.model import geometry
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

    @torch.inference_mode()
    def parse(self, images: list[np.ndarray]) -> list[FaceParse]:
        """RGB uint8 (H,W,3) arrays of any sizes -> one FaceParse each."""
        if not images:
            return []
        # np.array(copy) only when needed: torch refuses to wrap read-only arrays (e.g. from PIL) silently.
        tensors = [torch.from_numpy(im if im.flags.writeable and im.flags.c_contiguous else np.array(im)).to(self.device).permute(2, 0, 1) for im in images]
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
