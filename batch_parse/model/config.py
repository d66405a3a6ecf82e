"""Hyper-parameters of STN-iCNN, in one place (no literals scattered through the model code)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from batch_parse.labels import NUM_CLASSES, NUM_PART_CLASSES, PARTS, class_names

# Geometry conventions (see geometry.py):
#   "authors": stage 1 sees the whole image stretched to 128x128; STN windows live in the
#              1024x1024 zero-padded canvas. Required to run the authors' released Helen weights.
#   "square":  stage 1 sees the image zero-padded to a centred square (aspect kept); windows
#              live in that square's normalised frame, so the localiser's output does not depend
#              on an image size it cannot see. Used by this project's own weights.
GEOMETRIES = ("authors", "square")
# "authors": float bilinear (align_corners=True), then truncated to 8 bit, as their loader does.
# "antialias": antialiased bilinear; large photos do not alias into noise at 128 px.
STAGE1_RESIZES = ("authors", "antialias")
PASTE_MODES = ("nearest", "bilinear")


LEGACY_POLICY_KEYS = ("refine_small_faces", "search_below", "search_sizes")


@dataclass(frozen=True)
class ICNNConfig:
    widths: tuple[int, ...] = (8, 16, 24, 32)  # channels per row (scale)
    kernel_size: int = 5
    last_kernel_size: int = 9
    interlink_layers: int = 3
    in_channels: int = 3


@dataclass(frozen=True)
class ModelConfig:
    stage1_size: int = 128
    part_size: int = 81
    # Stage-1 classes, a prefix of labels.CLASS_NAMES: 9 (parts only: v1, v2, the authors') or
    # 10 (plus skin, a coarse region from stage 1). Stage 2 always draws the 9 part classes.
    num_classes: int = NUM_CLASSES
    num_parts: int = len(PARTS)
    icnn: ICNNConfig = field(default_factory=ICNNConfig)
    geometry: str = "square"
    stage1_resize: str = "antialias"
    paste_mode: str = "nearest"
    canvas_size: int = 1024  # only for geometry="authors"

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.stage1_resize not in STAGE1_RESIZES:
            raise ValueError(f"stage1_resize must be one of {STAGE1_RESIZES}, got {self.stage1_resize!r}")
        if self.paste_mode not in PASTE_MODES:
            raise ValueError(f"paste_mode must be one of {PASTE_MODES}, got {self.paste_mode!r}")
        class_names(self.num_classes)  # raises for a class count no label list matches

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_names(self.num_classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        raw = json.loads(text)
        icnn = raw.pop("icnn", {})
        icnn["widths"] = tuple(icnn.get("widths", ICNNConfig.widths))
        # Inference policy once lived in weights files (face search, small-face refinement); it is
        # the job's choice now (JobOptions, recorded in the output metadata): ignore it here.
        for policy in LEGACY_POLICY_KEYS:
            raw.pop(policy, None)
        return cls(icnn=ICNNConfig(**icnn), **raw)


# The authors' test-time conventions: what their released checkpoints expect.
AUTHORS_CONFIG = ModelConfig(num_classes=NUM_PART_CLASSES, geometry="authors", stage1_resize="authors", paste_mode="nearest")
# This project's own weights.
DEFAULT_CONFIG = ModelConfig()
