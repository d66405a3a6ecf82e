"""The inference API everything else uses: load a parser by name or path, parse faces or whole images.

    detector = load_detector("mtcnn")                  # batch_parse.faces
    parser = load_parser("stn-icnn/default")           # or a path to a .safetensors file
    faces = detector.detect(images)                    # RGB uint8 (H,W,3) arrays, any sizes
    results = parser.parse_faces(images, faces)        # one FaceResult per face, in photo pixels
    results = parser.parse(images)                     # each image parsed whole, as one face

Data contract between the stages of `parse` (batch-first, as in facer):
    images        list of (3,H_i,W_i) uint8 on the device
    stage1_input  (N,3,128,128) float 0..1
    stage1_probs  (N,C,128,128) softmax of stage-1 logits (C = cfg.num_classes: 9, or 10 with skin)
    theta         (N,6,2,3) localiser output in frame coordinates (geometry.py)
    windows       (N,6,4) float64 (ax,bx,ay,by) in each image's pixels
    crops         (N,6,3,81,81) float 0..1
    part_probs    6 x (N,1+classes,81,81) stage-2 softmax, PARTS order
    label_map     (H,W) uint8: the parts pasted back from stage 2; for models with a skin class,
                  skin wherever stage 2 says background and stage 1 says face (geometry.add_skin)
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from batch_parse.labels import CLASS_NAMES, NUM_CLASSES, NUM_PART_CLASSES, PART_NAMES
from batch_parse.faces import align
from batch_parse.faces.detector import Detections
from batch_parse.model import geometry
from batch_parse.model.fuse import optimize_for_inference
from batch_parse.model.stn_icnn import STNiCNN
from batch_parse.model.registry import DEFAULT
from batch_parse.model.weights import file_sha256, load_weights, resolve


@dataclass
class FaceParse:
    """One image's result. Arrays are numpy; boxes and confidences follow labels.PARTS order."""

    label_map: np.ndarray  # (H,W) uint8 class indices (class_names)
    boxes: np.ndarray  # (6,4) float32 [x0,y0,x1,y1] in original pixels
    confidences: np.ndarray  # (6,) float32, mean max-probability over the part's own pixels
    class_pixels: np.ndarray  # (10,) int64 pixel count per class of labels.CLASS_NAMES (0 past the model's)
    class_names: tuple[str, ...] = CLASS_NAMES  # the model's classes (ModelConfig.class_names), a prefix

    part_names = PART_NAMES


@dataclass
class FaceResult:
    """One face of one image: where it is, how it was aligned, and its parse.

    The parse is computed in the aligned frame (upright, `alignment.width` x `.height` pixels)
    and its label map mapped back to the photo; boxes/confidences follow labels.PARTS order.
    """

    image_index: int  # which of the images passed in
    face_index: int  # which face of that image (detection order: largest first)
    face_box: np.ndarray  # (4,) float32 [x0,y0,x1,y1] detector box in photo pixels (whole image: the image)
    landmarks: np.ndarray | None  # (5,2) float32 photo pixels (eyes, nose, mouth corners); None for whole-image
    score: float | None  # detector confidence; None for whole-image
    alignment: align.Alignment  # photo <-> frame transform
    aligned: np.ndarray  # (h,w,3) uint8 the aligned frame
    frame_label_map: np.ndarray  # (h,w) uint8 class indices in the frame
    label_map: np.ndarray  # (H',W') uint8 class indices over the photo region the frame covers
    label_map_offset: tuple[int, int]  # (x0, y0) of label_map in the photo
    boxes: np.ndarray  # (6,4) float32 part windows [x0,y0,x1,y1] in frame pixels
    windows: np.ndarray  # (6,4,2) float32 the same windows' corners in photo pixels (TL, TR, BR, BL)
    confidences: np.ndarray  # (6,) float32
    class_pixels: np.ndarray  # (10,) int64 pixel count per class of labels.CLASS_NAMES over label_map

    def part_crop(self, part: int) -> np.ndarray:
        """The part's window cut from the aligned frame (upright), (h,w,3) uint8; 0x0 when off the frame."""
        return crop_box(self.aligned, self.boxes[part])

    def photo_label_map(self, width: int, height: int) -> np.ndarray:
        """This face's label map placed in a (height,width) photo-sized map (0 elsewhere)."""
        full = np.zeros((height, width), np.uint8)
        x0, y0 = self.label_map_offset
        h, w = self.label_map.shape
        full[y0 : y0 + h, x0 : x0 + w] = self.label_map
        return full


# Faces per network call in parse_faces: large enough to fill a GPU, small enough that a crowd
# photo's activations stay a few hundred MB.
FACES_PER_CALL = 64


class _Clock:
    """Adds elapsed seconds per phase to a dict (no-op without one); syncs CUDA so GPU time lands where it is spent."""

    def __init__(self, timings: dict[str, float] | None, device: torch.device):
        self.timings, self.device = timings, device
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.timings is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self.last
        self.last = now


def crop_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box cut from the image at full resolution, clipped to the image; (0,0,3) when off it."""
    h, w = image.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2])) + 1), min(h, int(np.ceil(box[3])) + 1)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    return image[y0:y1, x0:x1]


# ---- precision policy (speed work, issue 20) ----
# "mixed": stage 2 (the four part iCNNs, ~60% of the parser's fp32 time) in bfloat16, stage 1 and
# the localiser in float32. Measured on real photos against all-fp32 labels (benchmarks/
# peer_speed.py --agreement): stage 2 in bf16 keeps 99.98% of pixels (99.8% of part pixels) and
# runs ~3x faster on CPUs with native bf16 (AMX / AVX512-BF16). Stage 1 or the localiser in bf16
# move the part windows by 0.1-0.6 px, which re-samples every crop, so they stay fp32 in "mixed".
# "fast" adds stage 1 (for comparisons only): 99.8-99.9% of pixels but 89.5-99% of part pixels
# (whole in-the-wild photos worst), and no clear gain with the detector in front; the localiser in
# bf16 too ("bf16", likewise): 95% of part pixels.
PRECISIONS = ("auto", "fp32", "mixed", "fast", "bf16", "fp16")
# The network stages each precision runs in reduced precision ("bf16"/"fp16": all of them).
BF16_STAGES = {"fp32": (), "mixed": ("stage2",), "fast": ("stage1", "stage2")}


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 in hardware; without it oneDNN emulates bf16 and it is slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
    except AttributeError:  # private helpers: a torch without them gets the safe answer
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "mixed" on CUDA and on CPUs with native bf16, else "fp32"; other values as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "mixed" if device.type == "cuda" or native_bf16_cpu() else "fp32"


# ---- end of precision policy ----


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FaceParser:
    def __init__(self, model: STNiCNN | None, name: str, weights_sha256: str, device: str | None = None, precision: str = "auto",
                 nets=None):
        """nets: something else that answers stage1 / localise / parse_parts and has a cfg (the
        onnxruntime graphs, batch_parse.onnx.runtime); model is then None."""
        self.device = pick_device(device)
        self.model = model.eval() if model is not None else None  # as loaded, for inspection
        self._net = nets if nets is not None else optimize_for_inference(model).to(self.device)  # what runs
        self.cfg = self._net.cfg
        self.class_names = self.cfg.class_names  # 9 classes (v1, v2) or 10 (with skin)
        self.model_name = name
        self.weights_sha256 = weights_sha256
        self.precision = resolve_precision(precision, self.device)

    @property
    def model_version(self) -> str:
        return f"{self.model_name}@{self.weights_sha256[:8]}"

    def _autocast(self, stage: str):
        """Autocast for one network stage ("stage1", "localiser", "stage2") under self.precision."""
        if stage not in BF16_STAGES.get(self.precision, ("stage1", "localiser", "stage2")):
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def parse(self, images: list[np.ndarray]) -> list[FaceParse]:
        """RGB uint8 (H,W,3) arrays of any sizes -> one FaceParse each, the whole image as the face."""
        return self._parse_once([self._tensor(im) for im in images])

    @torch.inference_mode()
    def parse_faces(self, images: list[np.ndarray], faces: list[Detections] | None = None,
                    max_side: int = align.DEFAULT_MAX_SIDE, timings: dict[str, float] | None = None) -> list[FaceResult]:
        """Every face of every image, each aligned upright and parsed there: one FaceResult per face.

        faces[i] are image i's detections (a FaceDetector's output); None parses each whole image
        as one face (`--faces whole-image`, for corpora of aligned crops). Results come image by
        image, faces in their detection order; `image_index` says which image a result is of.
        timings: when given, seconds spent in "align", "parse" and "map_back" are added to it, and
        "parse"'s own parts as "parse.stage1", "parse.localiser", "parse.crops", "parse.stage2"
        (the rest of "parse" is paste-back).
        """
        clock = _Clock(timings, self.device)
        tensors = [self._tensor(im) for im in images]
        jobs: list[tuple[int, int, align.Alignment]] = []
        for i, t in enumerate(tensors):
            if faces is None:
                jobs.append((i, 0, align.whole_image(t.shape[2], t.shape[1])))
            else:
                jobs += [(i, k, align.fit(points, max_side)) for k, points in enumerate(faces[i].landmarks)]
        frames = [tensors[i] if faces is None else align.warp(tensors[i], a) for i, _, a in jobs]
        clock.lap("align")
        # A crowd photo can hold hundreds of faces: parse them in bounded chunks.
        parsed = []
        for start in range(0, len(frames), FACES_PER_CALL):
            parsed += self._parse_once(frames[start : start + FACES_PER_CALL], keep_maps_on_device=True, timings=timings)
        clock.lap("parse")
        results = []
        for (i, k, alignment), frame, r in zip(jobs, frames, parsed):
            height, width = images[i].shape[:2]
            if faces is None:
                region, x0, y0 = r.label_map, 0, 0
            else:
                region, x0, y0 = align.label_map_to_photo(r.label_map, alignment, width, height)
            region = region.cpu().numpy()
            counts = np.bincount(region.ravel(), minlength=NUM_CLASSES).astype(np.int64)
            det = None if faces is None else faces[i]
            results.append(FaceResult(
                image_index=i,
                face_index=k,
                face_box=np.array([0, 0, width, height], np.float32) if det is None else det.boxes[k],
                landmarks=None if det is None else det.landmarks[k],
                score=None if det is None else float(det.scores[k]),
                alignment=alignment,
                aligned=frame.permute(1, 2, 0).cpu().numpy(),
                frame_label_map=r.label_map.cpu().numpy(),
                label_map=region,
                label_map_offset=(x0, y0),
                boxes=r.boxes,
                windows=alignment.to_photo(align.box_corners(r.boxes).astype(np.float64)).astype(np.float32),
                confidences=r.confidences,
                class_pixels=counts,
            ))
        clock.lap("map_back")
        return results

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        """(H,W,3) uint8 numpy -> (3,H,W) uint8 tensor on the device."""
        # np.array(copy) only when needed: torch refuses to wrap read-only arrays (e.g. from PIL) silently.
        array = image if image.flags.writeable and image.flags.c_contiguous else np.array(image)
        return torch.from_numpy(array).to(self.device).permute(2, 0, 1)

    @torch.inference_mode()
    def _parse_once(self, tensors: list[torch.Tensor], keep_maps_on_device: bool = False,
                    timings: dict[str, float] | None = None) -> list[FaceParse]:
        """(3,H,W) uint8 tensors on the device -> one FaceParse each (label maps as torch when asked)."""
        if not tensors:
            return []
        clock = _Clock(timings, self.device)  # the parser's stages, for benchmarks (see parse_faces)
        sizes = [(t.shape[2], t.shape[1]) for t in tensors]
        x = torch.stack([geometry.stage1_input(t, self.cfg) for t in tensors]).contiguous(memory_format=torch.channels_last)
        with self._autocast("stage1"):
            stage1_probs = self._net.stage1(x).float().softmax(1)
        clock.lap("parse.stage1")
        with self._autocast("localiser"):
            theta = self._net.localise(stage1_probs).float()
        clock.lap("parse.localiser")
        windows = geometry.theta_to_windows(theta, sizes, self.cfg)
        crops = torch.stack([geometry.crop_parts(t, w, self.cfg.part_size) for t, w in zip(tensors, windows)])
        clock.lap("parse.crops")
        with self._autocast("stage2"):
            part_probs = [y.float().softmax(1) for y in self._net.parse_parts(crops)]
        clock.lap("parse.stage2")
        boxes = geometry.window_boxes(windows).float().numpy()
        confidences = part_confidences(part_probs).cpu().numpy()
        results = []
        for i, (w, h) in enumerate(sizes):
            labels = geometry.label_map([p[i] for p in part_probs], windows[i], w, h, self.cfg.paste_mode)
            if self.cfg.num_classes > NUM_PART_CLASSES:  # skin: stage 1's face minus stage 2's parts
                geometry.add_skin(labels, stage1_probs[i], w, h, self.cfg)
            counts = torch.bincount(labels.flatten().long(), minlength=NUM_CLASSES).cpu().numpy()
            results.append(FaceParse(labels if keep_maps_on_device else labels.cpu().numpy(), boxes[i], confidences[i], counts,
                                     self.class_names))
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


def load_parser(name_or_path: str = DEFAULT, device: str | None = None, precision: str = "auto") -> FaceParser:
    """A ready FaceParser from a registry name (e.g. "stn-icnn/default") or a .safetensors path."""
    name, path = resolve(name_or_path)
    model, _ = load_weights(path)
    return FaceParser(model, name, file_sha256(path), device=device, precision=precision)
