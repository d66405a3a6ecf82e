"""Alignment: the similarity fit, the warp into the aligned frame, and label maps mapped back to photo pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from batch_parse.faces import align


def _rotation(deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)) * scale, math.sin(math.radians(deg)) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def test_similarity_recovers_an_exact_transform():
    src = np.array([[10, 20], [50, 22], [30, 45], [15, 60], [47, 61]], float)
    m = _rotation(17, 1.7, 5, -3)
    dst = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(align.similarity(src, dst), m, atol=1e-9)


def test_similarity_never_mirrors():
    src = np.array([[0, 0], [10, 0], [5, 5], [2, 9], [8, 9]], float)
    mirrored = src * [-1, 1]
    m = align.similarity(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_fit_puts_landmarks_on_the_template_at_native_resolution():
    # A face whose frame would be 120 px in the photo: the frame is 120 px, not upsampled to the cap.
    side = 120.0
    m = _rotation(-25, 1 / side, 0.2, 0.1)  # unit frame -> ... we build photo points from template
    inv = np.linalg.inv(m[:, :2])
    photo = (align.TEMPLATE - m[:, 2]) @ inv.T + 300
    a = align.fit(photo)
    assert a.width == a.height == 120
    frame_points = a.to_frame(photo)
    np.testing.assert_allclose(frame_points, align.TEMPLATE * 120 - 0.5, atol=1e-6)
    np.testing.assert_allclose(a.to_photo(frame_points), photo, atol=1e-6)
    assert a.scale == pytest.approx(1.0, rel=1e-6)


def test_fit_caps_large_faces_and_floors_tiny_ones():
    big = align.TEMPLATE * 1000
    tiny = align.TEMPLATE * 10
    assert align.fit(big).width == align.DEFAULT_MAX_SIDE
    assert align.fit(big, max_side=128).width == 128
    assert align.fit(tiny).width == align.MIN_SIDE


def test_warp_samples_the_photo_where_the_matrix_says():
    # A photo whose pixel value encodes its own coordinates (smooth, so bilinear is exact-ish).
    h, w = 200, 240
    yy, xx = np.mgrid[0:h, 0:w]
    photo = np.stack([xx, yy, np.full_like(xx, 128)], -1).astype(np.uint8)
    a = align.Alignment(_rotation(10, 1.0, -40, -30), 100, 100)
    frame = align.warp(torch.from_numpy(photo).permute(2, 0, 1), a).permute(1, 2, 0).numpy().astype(float)
    for u, v in [(10, 10), (50, 60), (90, 20)]:
        x, y = a.to_photo(np.array([u, v], float))
        assert frame[v, u, 0] == pytest.approx(x, abs=1.0)
        assert frame[v, u, 1] == pytest.approx(y, abs=1.0)


def test_warp_outside_the_photo_is_black_and_never_fails():
    photo = torch.full((3, 50, 50), 200, dtype=torch.uint8)
    off = align.Alignment(np.array([[1.0, 0, -500], [0, 1.0, -500]]), 64, 64)
    assert align.warp(photo, off).sum() == 0
    half = align.Alignment(np.array([[1.0, 0, 25], [0, 1.0, 0]]), 64, 64)  # frame u = x + 25
    frame = align.warp(photo, half)
    assert frame[0, 10, 30].item() == 200 and frame[0, 10, 10].item() == 0


def test_downscaled_warp_is_antialiased():
    # A 1-pixel checkerboard shrunk 4x must come out as flat grey, not aliased stripes.
    board = ((np.indices((400, 400)).sum(0) % 2) * 255).astype(np.uint8)
    photo = torch.from_numpy(np.stack([board] * 3))
    a = align.Alignment(np.array([[0.25, 0, 0], [0, 0.25, 0]]), 100, 100)
    frame = align.warp(photo, a).float()
    inner = frame[:, 5:95, 5:95]
    assert abs(inner.mean().item() - 127.5) < 3 and inner.std().item() < 6


def test_label_map_to_photo_inverts_the_warp():
    h, w = 300, 400
    m = _rotation(30, 0.8, 0, 0)
    m[:, 2] = np.array([64, 64]) - m[:, :2] @ np.array([200, 150])  # frame centre on the photo's
    a = align.Alignment(m, 128, 128)
    labels = torch.zeros(128, 128, dtype=torch.uint8)
    labels[40:60, 30:90] = 5
    region, x0, y0 = align.label_map_to_photo(labels, a, w, h)
    x1, y1 = x0 + region.shape[1], y0 + region.shape[0]
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    ys, xs = np.nonzero(region.numpy() == 5)
    frame_points = a.to_frame(np.stack([xs + x0, ys + y0], -1).astype(float))
    # Every photo pixel labelled 5 maps back inside the labelled frame rectangle (nearest: +-0.5).
    assert frame_points[:, 0].min() >= 29.5 - 1e-6 and frame_points[:, 0].max() <= 89.5 + 1e-6
    assert frame_points[:, 1].min() >= 39.5 - 1e-6 and frame_points[:, 1].max() <= 59.5 + 1e-6
    # Area is preserved up to the scale: 20x60 frame pixels at 0.8 frame px per photo px.
    assert len(xs) == pytest.approx(20 * 60 / 0.8**2, rel=0.05)


def test_whole_image_alignment_is_the_identity():
    a = align.whole_image(64, 48)
    assert (a.width, a.height) == (64, 48)
    labels = torch.randint(0, 9, (48, 64), dtype=torch.uint8)
    region, x0, y0 = align.label_map_to_photo(labels, a, 64, 48)
    assert (x0, y0) == (0, 0) and torch.equal(region, labels)


def test_box_corners_order():
    corners = align.box_corners(np.array([[1, 2, 5, 7]], float))
    np.testing.assert_array_equal(corners[0], [[1, 2], [5, 2], [5, 7], [1, 7]])
