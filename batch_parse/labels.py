"""Class names, colours, facial parts and dataset label mappings: the one source of truth.

Every other module (model, training, pipeline, output schema, rendering) imports from here,
so a class or part is renamed or recoloured in exactly one place.

Side convention (the same as Helen's label files and the authors' code): "1" is the part on
the image's left, "2" the one on the image's right. For a frontal, unmirrored photo, brow_1 and
eye_1 are therefore the subject's *right* brow and eye.
"""

from __future__ import annotations

from dataclasses import dataclass

# Index = the pixel value written in every label map this project produces.
CLASS_NAMES: tuple[str, ...] = (
    "background",  # everything else: hair, neck, ears, clothes, the scene (and skin for 9-class models)
    "brow_1",
    "brow_2",
    "eye_1",
    "eye_2",
    "nose",
    "upper_lip",
    "inner_mouth",
    "lower_lip",
    # The face's skin: inside the face outline, minus every part above. Appended last so that
    # classes 0-8 keep the indices of 9-class outputs (stn-icnn/v1, v2): a model's class list is
    # always CLASS_NAMES[:num_classes] (ModelConfig.num_classes), and every output file records it.
    "skin",
)
NUM_CLASSES = len(CLASS_NAMES)
BACKGROUND = 0
SKIN = CLASS_NAMES.index("skin")

# RGB colours for overlays and legends; chosen to stay distinct on skin tones.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (255, 170, 0),
    (255, 85, 0),
    (0, 200, 255),
    (0, 90, 255),
    (170, 255, 0),
    (255, 0, 120),
    (140, 0, 255),
    (255, 0, 220),
    (0, 170, 150),  # skin: teal, unlike any skin tone (visible in overlays) and unlike the parts
)


@dataclass(frozen=True)
class Part:
    """A facial part: one STN window and one stage-2 network.

    classes: the class indices this part's stage-2 foreground channels map to, in order.
    network: the stage-2 iCNN that parses it (brows share one, eyes share one).
    mirrored: the window is flipped left-right before the shared network and back after,
              so the network only ever sees "side 1" parts.
    """

    name: str
    classes: tuple[int, ...]
    network: str
    mirrored: bool

    @property
    def num_outputs(self) -> int:
        """Stage-2 output channels: background plus the part's classes."""
        return 1 + len(self.classes)


# Order matters: it is the authors' order of the six STN transforms (theta rows).
PARTS: tuple[Part, ...] = (
    Part("brow_1", (1,), "brow", False),
    Part("brow_2", (2,), "brow", True),
    Part("eye_1", (3,), "eye", False),
    Part("eye_2", (4,), "eye", True),
    Part("nose", (5,), "nose", False),
    Part("mouth", (6, 7, 8), "mouth", False),
)
PART_NAMES: tuple[str, ...] = tuple(p.name for p in PARTS)
# Background plus every class a stage-2 part network draws (0-8). Classes past these (skin) are
# coarse regions that only stage 1 predicts: the localiser and paste-back never see them.
NUM_PART_CLASSES = 1 + max(c for p in PARTS for c in p.classes)
COARSE_CLASSES: tuple[int, ...] = tuple(range(NUM_PART_CLASSES, NUM_CLASSES))
# The order a face's classes are handed to editors that paint regions in order (Label Studio: a
# later region wins where two overlap): coarse regions first, as they lie under the parts, so a
# part a reviewer grows over skin stays the part when it comes back.
PAINT_ORDER: tuple[int, ...] = (*COARSE_CLASSES, *range(1, NUM_PART_CLASSES))


def class_names(num_classes: int) -> tuple[str, ...]:
    """The class list of a model or an output with num_classes classes (a prefix of CLASS_NAMES)."""
    if not NUM_PART_CLASSES <= num_classes <= NUM_CLASSES:
        raise ValueError(f"a model has {NUM_PART_CLASSES}..{NUM_CLASSES} classes, not {num_classes}")
    return CLASS_NAMES[:num_classes]

# Class of each class in the mirrored image: side 1 and side 2 trade places (brow_1 <-> brow_2,
# eye_1 <-> eye_2), the rest stay. Used to mirror label maps (augmentation, flip checks).
MIRROR_CLASS: tuple[int, ...] = (0, 2, 1, 4, 3, 5, 6, 7, 8, 9)

# The four stage-2 networks, in the authors' order (model C's `model.0` ... `model.3`).
STAGE2_NETWORKS: tuple[str, ...] = ("brow", "eye", "nose", "mouth")
STAGE2_OUTPUTS: dict[str, int] = {p.network: p.num_outputs for p in PARTS}

# Helen (SmithCVPR2013_dataset_resized): labels/NAME/NAME_lblXX.png, XX = index below.
HELEN_LABELS: tuple[str, ...] = (
    "background",
    "face_skin",
    "left_brow",
    "right_brow",
    "left_eye",
    "right_eye",
    "nose",
    "upper_lip",
    "inner_mouth",
    "lower_lip",
    "hair",
)
HELEN_TO_CLASS: tuple[int, ...] = (0, SKIN, 1, 2, 3, 4, 5, 6, 7, 8, 0)
# The way back, for writing our maps in Helen's layout: each class's first Helen label.
CLASS_TO_HELEN: tuple[int, ...] = tuple(HELEN_TO_CLASS.index(c) for c in range(NUM_CLASSES))

# CelebAMask-HQ (CelebAMask-HQ-mask-anno/K/NNNNN_<part>.png). Its l_/r_ prefixes name the
# subject's side, so l_ lands on the image's right: side 2 in our convention.
# Parts not listed (hair, ears, neck, cloth, hat, glasses...) are background here. CelebAMask's
# "skin" is the face's skin without ears and neck, as ours.
CELEBAMASK_TO_CLASS: dict[str, int] = {
    "skin": SKIN,  # first: readers draw in this order, so every part lands over the skin
    "r_brow": 1,
    "l_brow": 2,
    "r_eye": 3,
    "l_eye": 4,
    "nose": 5,
    "u_lip": 6,
    "mouth": 7,
    "l_lip": 8,
}

# Evaluation groups, Helen convention (see batch_parse/train/evaluate.py).
F1_GROUPS: dict[str, tuple[int, ...]] = {
    "brows": (1, 2),
    "eyes": (3, 4),
    "nose": (5,),
    "upper_lip": (6,),
    "inner_mouth": (7,),
    "lower_lip": (8,),
    "mouth": (6, 7, 8),
    "overall": (1, 2, 3, 4, 5, 6, 7, 8),  # face parts: the paper's figure, unchanged by the skin class
    "skin": (SKIN,),
}

# Part of each class (index into PARTS; background has none): the part whose confidence a
# class's pixels carry (upper_lip, inner_mouth and lower_lip all belong to `mouth`).
CLASS_PART: tuple[int | None, ...] = tuple(
    next((i for i, p in enumerate(PARTS) if c in p.classes), None) for c in range(NUM_CLASSES)
)

# The detector's five landmarks, in the order of the `landmarks` column ("left"/"right" = the image's).
LANDMARK_NAMES: tuple[str, ...] = ("eye_image_left", "eye_image_right", "nose_tip", "mouth_image_left", "mouth_image_right")
# Lines between landmarks for drawing them as a skeleton (COCO keypoints, FiftyOne), 0-based.
LANDMARK_EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4))
