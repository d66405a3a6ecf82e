"""Helen-convention F1 scoring on hand-computed label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from batch_parse.labels import F1_GROUPS
from batch_parse.train.evaluate import confusion, evaluate, f1_scores, format_scores


def test_perfect_prediction_scores_one():
    gt = np.arange(9, dtype=np.uint8).repeat(3).reshape(3, 9)
    scores = f1_scores(confusion(gt, gt))
    assert scores == {group: 1.0 for group in F1_GROUPS}


def test_known_counts():
    gt = np.array([[0, 0, 5, 5, 5, 5, 0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 5, 5, 5, 0, 0, 0, 0, 1, 0]], np.uint8)
    hist = confusion(pred, gt)
    assert hist.dtype == np.int64 and hist.shape == (9, 9)
    assert hist[5, 5] == 2 and hist[0, 5] == 1 and hist[5, 0] == 2
    assert hist[1, 1] == 1 and hist[1, 0] == 1 and hist[0, 0] == 3
    assert hist.sum() == gt.size
    scores = f1_scores(hist)
    # nose: TP 2, FP 1, FN 2 -> 2*2 / (4 + 3)
    assert scores["nose"] == pytest.approx(4 / 7)
    # brows: TP 1, FP 0, FN 1 -> 2*1 / (2 + 1)
    assert scores["brows"] == pytest.approx(2 / 3)
    # overall: gt parts 6, predicted parts 4, both 3 -> 6 / 10
    assert scores["overall"] == pytest.approx(0.6)
    assert math.isnan(scores["eyes"])


def test_groups_merge_their_classes():
    # Upper lip called lower lip, brow_1 called brow_2: wrong per class, right per group.
    gt = np.array([[6, 6, 7, 8, 1, 1]], np.uint8)
    pred = np.array([[8, 8, 7, 8, 2, 2]], np.uint8)
    scores = f1_scores(confusion(pred, gt))
    assert scores["upper_lip"] == 0.0
    assert scores["lower_lip"] == pytest.approx(2 * 1 / (1 + 3))
    assert scores["inner_mouth"] == 1.0
    assert scores["mouth"] == 1.0
    assert scores["brows"] == 1.0
    assert scores["overall"] == 1.0


def test_background_only_is_undefined_not_perfect():
    blank = np.zeros((5, 7), np.uint8)
    hist = confusion(blank, blank)
    assert hist[0, 0] == 35 and hist.sum() == 35
    assert all(math.isnan(v) for v in f1_scores(hist).values())


def test_rejects_mismatched_sizes_and_bad_classes():
    with pytest.raises(ValueError, match="same resolution"):
        confusion(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="outside 0..8"):
        confusion(np.full((2, 2), 9, np.uint8), np.zeros((2, 2), np.uint8))


def test_evaluate_pools_pixels_over_the_set():
    # Image a: 2 nose pixels found; image b (another size): 8 nose pixels missed.
    gt_a = np.zeros((2, 3), np.uint8)
    gt_a[0, :2] = 5
    gt_b = np.zeros((4, 5), np.uint8)
    gt_b[:2, :4] = 5
    predictions = {gt_a.shape: gt_a.copy(), gt_b.shape: np.zeros_like(gt_b)}
    samples = [("a", np.zeros((2, 3, 3), np.uint8), gt_a), ("b", np.zeros((4, 5, 3), np.uint8), gt_b)]
    calls = []

    def predict(images):
        calls.append(len(images))
        return [predictions[image.shape[:2]] for image in images]

    hist, scores = evaluate(predict, samples, batch_size=1)
    assert calls == [1, 1]
    assert hist.sum() == 6 + 20
    # Pooled: 2*2 / (10 + 2) = 1/3, not the per-image mean (1 + 0) / 2.
    assert scores["nose"] == pytest.approx(1 / 3)
    assert format_scores(scores).startswith("brows=nan  eyes=nan  nose=33.33")
