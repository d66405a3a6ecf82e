"""Helen-convention F1 scoring on hand-computed label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from batch_parse.labels import F1_GROUPS
from batch_parse.train.evaluate import confusion, evaluate, f1_scores, format_scores


def test_perfect_prediction_scores_one():
    gt = np.arange(10, dtype=np.uint8).repeat(3).reshape(3, 10)  # every class, skin included
    scores = f1_scores(confusion(gt, gt))
    assert scores == {group: 1.0 for group in F1_GROUPS}


def test_known_counts():
    gt = np.array([[0, 0, 5, 5, 5, 5, 0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 5, 5, 5, 0, 0, 0, 0, 1, 0]], np.uint8)
    hist = confusion(pred, gt)
    assert hist.dtype == np.int64 and hist.shape == (10, 10)
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
    with pytest.raises(ValueError, match="outside 0..9"):
        confusion(np.full((2, 2), 10, np.uint8), np.zeros((2, 2), np.uint8))


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


def _labelled(seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    label = np.zeros((60, 80), dtype=np.uint8)
    label[10:20, 15:25] = 5
    return f"face{seed}", image, label


def test_reframe_places_each_image_with_its_labels_in_a_cluttered_canvas():
    from batch_parse.train.framing import TILE, reframe

    samples = [_labelled(seed) for seed in range(3)]
    framed = list(reframe(samples, 0.4))
    assert len(framed) == 3
    for (name, image, label), (framed_name, canvas, framed_label) in zip(samples, framed):
        assert framed_name == name
        assert canvas.shape == (150, 200, 3) and framed_label.shape == (150, 200)  # 80 px = 0.4 of 200, 4:3
        ys, xs = np.nonzero(framed_label)
        y, x = ys.min() - 10, xs.min() - 15
        assert np.array_equal(canvas[y : y + 60, x : x + 80], image)
        assert np.array_equal(framed_label[y : y + 60, x : x + 80], label)
        assert framed_label.sum() == label.sum()  # no labels outside the original crop
    # Clutter of the second canvas is cut from the first image: any corner tile is a rotated piece of it.
    (_, first, _), (_, canvas, framed_label) = samples[0], framed[1]
    ys, xs = np.nonzero(framed_label)
    corner = canvas[:TILE, :TILE] if ys.min() > 10 + TILE or xs.min() > 15 + TILE else canvas[-TILE:, -TILE:]
    pieces = [np.rot90(first[r : r + TILE, c : c + TILE], k) for r in range(60 - TILE + 1) for c in range(80 - TILE + 1) for k in range(4)]
    assert any(np.array_equal(corner, piece) for piece in pieces)
    # Deterministic, identity at 1, refuses nonsense.
    again = list(reframe(samples, 0.4))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(framed, again))
    assert all(a[1] is b[1] for a, b in zip(samples, reframe(samples, 1.0)))
    with pytest.raises(ValueError, match="fraction"):
        list(reframe(samples, 0))
