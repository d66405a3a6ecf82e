"""Helen-convention scoring of label maps: a confusion histogram and F1 per part group.

Scores are computed from one histogram summed over the whole test set at each image's
original resolution (not averaged per image), as in the STN-iCNN paper and its predecessors.
A group's F1 treats every class in it as one positive class, so a brow_1 pixel predicted as
brow_2 still counts for "brows"; "overall" is face parts versus background.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from batch_parse.faces.policy import DEFAULT_POLICY, InferencePolicy
from batch_parse.labels import F1_GROUPS, NUM_CLASSES
from batch_parse.output.codec import add_face


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes, num_classes) int64 pixel counts; rows = ground truth, columns = prediction."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction is {pred.shape}, ground truth is {gt.shape}: score at the same resolution")
    pred = pred.astype(np.int64).ravel()
    gt = gt.astype(np.int64).ravel()
    for what, values in (("prediction", pred), ("ground truth", gt)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{what} has class indices outside 0..{num_classes - 1}")
    return np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def f1_scores(hist: np.ndarray) -> dict[str, float]:
    """F1 = 2|G∩P| / (|G|+|P|) for each group of labels.F1_GROUPS; NaN where both are empty."""
    scores = {}
    for group, classes in F1_GROUPS.items():
        members = list(classes)
        both = hist[np.ix_(members, members)].sum()
        in_gt = hist[members, :].sum()
        in_pred = hist[:, members].sum()
        scores[group] = float(2 * both / (in_gt + in_pred)) if in_gt + in_pred else float("nan")
    return scores


def evaluate(
    predict: Callable[[list[np.ndarray]], list[np.ndarray]],
    samples: Iterable[tuple[str, np.ndarray, np.ndarray]],
    batch_size: int = 16,
) -> tuple[np.ndarray, dict[str, float]]:
    """Runs predict (RGB images -> label maps of the same sizes) over samples; (hist, F1 scores)."""
    hist = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    batch: list[tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        for pred, (_, gt) in zip(predict([image for image, _ in batch]), batch, strict=True):
            hist[:] += confusion(np.asarray(pred), gt)
        batch.clear()

    for _, image, label in samples:
        batch.append((image, label))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return hist, f1_scores(hist)


def photo_label_maps(parser, detector, images: list[np.ndarray], policy: InferencePolicy = DEFAULT_POLICY) -> list[np.ndarray]:
    """Full-size label maps of each image: parsed whole (detector None) or face by face, as the job does
    (`policy`: which faces, min_face and threshold, as a run's).

    With several faces, later faces only fill pixels the earlier (larger) ones left as background.
    An image without a detected face is all background: that miss is part of the score.
    """
    if detector is None:
        return [r.label_map for r in parser.parse(images)]
    found = detector.detect(images, **policy.detect_kwargs())
    if policy.faces == "largest":
        found = [d.largest() for d in found]
    maps = [np.zeros(im.shape[:2], np.uint8) for im in images]
    for r in parser.parse_faces(images, found):
        add_face(maps[r.image_index], r.label_map, *r.label_map_offset)
    return maps


def format_scores(scores: dict[str, float]) -> str:
    """One line, groups in labels.F1_GROUPS order, as percentages like the papers print them."""
    return "  ".join(f"{group}={100 * value:.2f}" for group, value in scores.items())
