"""Turned faces from real frontal ones (batch_parse.train.synth_pose) on CFP photos, framed and
meshed as the face pool build does: identity at yaw 0, the far eye going and the near one
staying, the nose moving with the turn, labels that match the pixels, mirror symmetry."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_parse.faces.align import TEMPLATE
from batch_parse.labels import CLASS_COLORS, MIRROR_CLASS, SKIN

pytest.importorskip("mediapipe")
from batch_parse.train.synth_pose import TurnedFace, _band_triangles, _fill_nearest, _topology, mesh_yaw, turn_face  # noqa: E402
from meshed_faces import MeshedFace, cfp_frontal_photos, meshed_faces  # noqa: E402

EYE_1, EYE_2, NOSE = 3, 4, 5
COLOURS = np.array(CLASS_COLORS, np.uint8)


@pytest.fixture(scope="module")
def faces() -> list[MeshedFace]:
    found = meshed_faces(cfp_frontal_photos(3, every=25))
    assert len(found) >= 2, "the MediaPipe mesh found too few CFP frontal faces"
    return found


def _area(labels: np.ndarray, cls: int) -> int:
    return int((labels == cls).sum())


def _centre_x(labels: np.ndarray, cls: int) -> float:
    return float(np.nonzero(labels == cls)[1].mean())


def _mirror(face: MeshedFace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mesh = face.mesh.copy()
    mesh[:, 0] = face.image.shape[1] - mesh[:, 0]  # continuous pixels: x -> W - x
    labels = np.asarray(MIRROR_CLASS, np.uint8)[face.labels[:, ::-1]]
    return np.ascontiguousarray(face.image[:, ::-1]), mesh, np.ascontiguousarray(labels)


def _off_edges(labels: np.ndarray, reach: int = 2) -> np.ndarray:
    """Pixels whose neighbours up to `reach` px away (4 directions) all carry their label: away
    from where bilinear colours blend (over more than a pixel where the re-framing magnifies)."""
    same = np.ones(labels.shape, bool)
    for d in range(1, reach + 1):
        same[:, d:] &= labels[:, d:] == labels[:, :-d]
        same[:, :-d] &= labels[:, d:] == labels[:, :-d]
        same[d:] &= labels[d:] == labels[:-d]
        same[:-d] &= labels[d:] == labels[:-d]
    return same


def test_yaw_zero_gives_back_the_input(faces):
    for face in faces:
        out = turn_face(face.image, face.mesh, face.labels, 0.0, reframe=False)
        assert isinstance(out, TurnedFace)
        assert out.image.shape == face.image.shape and out.image.dtype == np.uint8
        assert np.abs(out.image.astype(int) - face.image).max() <= 1
        # Only the oval's rim may differ: the teacher votes its pixels 4x4, the render by centre.
        assert (out.labels == face.labels).mean() > 0.995
        # Re-framed, the detector-like points land where MTCNN's framed the input: on the template.
        side = face.image.shape[0]
        framed = turn_face(face.image, face.mesh, face.labels, 0.0)
        assert np.abs(framed.landmarks - (TEMPLATE * side - 0.5)).max() < 0.07 * side


def test_far_eye_goes_near_eye_stays(faces):
    # Positive yaw turns the face to the image's right: eye_2 (image right) is the far one.
    for face in faces:
        near0, far0 = _area(face.labels, EYE_1), _area(face.labels, EYE_2)
        assert near0 > 20 and far0 > 20
        ratios = []
        for yaw in (30, 60, 80):
            out = turn_face(face.image, face.mesh, face.labels, yaw, reframe=False)
            near, far = _area(out.labels, EYE_1), _area(out.labels, EYE_2)
            assert near > 0.15 * near0, (face.name, yaw, near, near0)
            ratios.append(far / far0)
        assert ratios[0] < 0.95 and ratios[1] < 0.35 and ratios[2] < 0.02, (face.name, ratios)
        assert ratios == sorted(ratios, reverse=True)
        # Framed as inference frames it, the profile keeps its near eye and loses the far one.
        profile = turn_face(face.image, face.mesh, face.labels, 80)
        assert _area(profile.labels, EYE_1) > 0.3 * near0 and _area(profile.labels, EYE_2) < 0.02 * far0


def test_nose_moves_towards_the_turn(faces):
    for face in faces:
        side = face.image.shape[1]
        xs = [_centre_x(turn_face(face.image, face.mesh, face.labels, yaw, reframe=False).labels, NOSE) for yaw in (0, 30, 60)]
        assert xs[0] < xs[1] - 0.1 * side and xs[1] < xs[2] - 0.1 * side, (face.name, xs)
        # In the inference frame too: the nose moves from the middle towards the right edge.
        framed = [turn_face(face.image, face.mesh, face.labels, yaw) for yaw in (0, 30, 60, 80)]
        offsets = [_centre_x(f.labels, NOSE) - _centre_x(f.labels, SKIN) for f in framed]
        assert abs(offsets[0]) < 0.05 * side and offsets == sorted(offsets), (face.name, offsets)
        left = turn_face(face.image, face.mesh, face.labels, -60)
        assert _centre_x(left.labels, NOSE) < _centre_x(left.labels, SKIN) - 0.05 * side


def test_turned_mesh_has_the_new_yaw_and_carries_the_points(faces):
    for face in faces:
        for yaw in (-60, 30, 80):
            out = turn_face(face.image, face.mesh, face.labels, yaw)
            assert out.mesh.shape == (478, 3)
            assert abs(mesh_yaw(out.mesh) - mesh_yaw(face.mesh) - yaw) < 3, (face.name, yaw)
            # The detector-like points sit on the turned mesh's near eye and mouth corner.
            near_eye, near_mouth = (0, 3) if yaw > 0 else (1, 4)
            irises = out.mesh[[468, 473], :2] - 0.5
            corners = out.mesh[[61, 291], :2] - 0.5
            assert np.linalg.norm(irises - out.landmarks[near_eye], axis=1).min() < 0.01 * face.image.shape[0]
            assert np.linalg.norm(corners - out.landmarks[near_mouth], axis=1).min() < 0.01 * face.image.shape[0]


def test_pitch_moves_the_nose_down(faces):
    face = faces[0]
    ys = [np.nonzero(turn_face(face.image, face.mesh, face.labels, 0, pitch, reframe=False).labels == NOSE)[0].mean()
          for pitch in (-15, 0, 15)]
    assert ys[0] < ys[1] < ys[2]


def _part_agreement(image: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Per part class: the share of its pixels (away from edges) that show its colour."""
    inner = _off_edges(labels)
    matches = np.abs(image.astype(int) - COLOURS[labels]).max(-1) <= 10
    return {cls: float(matches[(labels == cls) & inner].mean()) for cls in range(1, SKIN)
            if ((labels == cls) & inner).sum() >= 10}


@pytest.mark.parametrize("yaw", [30, 60, 80])
def test_labels_match_the_rendered_pixels(faces, yaw):
    # A face painted in its own class colours: after turning, the part pixels away from edges
    # must still show their class's colour (stretched parts blur their rims over a few pixels).
    for face in faces:
        out = turn_face(COLOURS[face.labels], face.mesh, face.labels, yaw)
        agreement = _part_agreement(out.image, out.labels)
        assert len(agreement) >= 4 and min(agreement.values()) > 0.85, (face.name, yaw, agreement)
        inner = _off_edges(out.labels) & (out.labels != 0)
        assert (np.abs(out.image.astype(int) - COLOURS[out.labels]).max(-1) <= 10)[inner].mean() > 0.95
        # The measure sees a misalignment: labels 3 px off lose most of a thin part.
        shifted = _part_agreement(out.image, np.roll(out.labels, 3, axis=0))
        assert min(shifted.values()) < 0.6, (face.name, yaw, shifted)


@pytest.mark.parametrize("yaw", [30, 80])
def test_mirrored_face_turned_the_other_way_is_the_mirror(faces, yaw):
    for face in faces:
        out = turn_face(face.image, face.mesh, face.labels, yaw)
        mirrored = turn_face(*_mirror(face), -yaw)
        assert (np.abs(out.image[:, ::-1].astype(int) - mirrored.image) > 2).mean() < 0.002
        assert (np.asarray(MIRROR_CLASS)[out.labels[:, ::-1]] == mirrored.labels).mean() > 0.998
        flipped = out.landmarks.copy()
        flipped[:, 0] = face.image.shape[1] - 1 - flipped[:, 0]
        assert np.allclose(flipped[[1, 0, 2, 4, 3]], mirrored.landmarks, atol=1e-6)


def test_every_pixel_comes_from_the_input(faces):
    # A flat grey input: whatever is exposed or stretched, nothing is left black.
    face = faces[0]
    grey = np.full_like(face.image, 128)
    for yaw in (-80, 45, 80):
        out = turn_face(grey, face.mesh, face.labels, yaw, pitch_deg=10)
        assert (out.image == 128).all()


def test_mismatched_inputs_are_refused(faces):
    face = faces[0]
    with pytest.raises(ValueError, match="do not match"):
        turn_face(face.image[:-1], face.mesh, face.labels, 30)
    with pytest.raises(ValueError, match="do not match"):
        turn_face(face.image, face.mesh[:468], face.labels, 30)
    with pytest.raises(ValueError, match="square aligned frame"):
        turn_face(face.image[:, :-1], face.mesh, face.labels[:, :-1], 30)


def test_mesh_and_rings_tile_a_disk_with_one_orientation():
    triangles, oval, holes = _topology()
    everything = np.concatenate([triangles, _band_triangles()])
    directed: dict[tuple[int, int], int] = {}
    for t in everything:
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
            directed[(a, b)] = directed.get((a, b), 0) + 1
    # Each edge once per direction at most, and (but for the outer ring) used both ways: a
    # surface with one orientation, no holes left (eyes and mouth closed by their fans).
    assert max(directed.values()) == 1
    one_way = [(a, b) for a, b in directed if (b, a) not in directed]
    outer_start = 478 + len(holes) + len(oval) * 3
    assert len(one_way) == len(oval) and all(a >= outer_start and b >= outer_start for a, b in one_way)


def test_uncovered_pixels_take_the_nearest_covered_one():
    winner = np.full((4, 5), -1)
    winner[1, 1], winner[2, 4] = 7, 9
    l1 = np.where(winner == 7, 0.25, np.where(winner == 9, 0.5, 0.0))
    filled, f1, f2 = _fill_nearest(winner, l1, l1 * 2)
    assert (filled >= 0).all()
    assert filled[0, 0] == 7 and filled[3, 4] == 9 and filled[1, 1] == 7 and filled[2, 4] == 9
    assert (f1[filled == 7] == 0.25).all() and (f2[filled == 9] == 1.0).all()


SHEET = Path(__file__).resolve().parents[1] / "benchmarks" / "synth_pose_sheet.py"


def test_contact_sheet_script_draws_the_sheet_and_measures(tmp_path):
    out = tmp_path / "sheet.png"
    command = [sys.executable, str(SHEET), "--faces", "1", "--check-detector", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(out) as sheet:
        assert sheet.size == (9 * 112, 112)  # 4 yaws x (face, overlay) + a real profile
    assert re.search(r"^speed at 256 px, 1 thread, 9 turns: CPU median [\d.]+ ms", done.stdout, re.M), done.stdout
    for yaw in (0, 30, 60, 80):
        assert re.search(rf"^  yaw {yaw:>2}: (found \d/2  eye_left [+-][\d.]+,[+-][\d.]+|no face found)", done.stdout, re.M), done.stdout
    bad = subprocess.run([sys.executable, str(SHEET), "--faces", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip() == "error: --faces must be >= 1 and --check-detector >= 0"


SCORES = Path(__file__).resolve().parents[1] / "benchmarks" / "synth_pose_scores.py"


def test_scores_script_prints_f1_per_yaw(tmp_path):
    command = [sys.executable, str(SCORES), "--models", "stn-icnn/v2", "--faces", "1", "--split", "val"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = re.findall(r"^  stn-icnn/v2\s+(\d+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+-$", done.stdout, re.M)
    assert [int(yaw) for yaw, _ in rows] == [0, 30, 60, 80], done.stdout
    # The shipped model labels the re-framed frontal face much as its teacher did.
    assert float(rows[0][1]) > 70, done.stdout
    bad = subprocess.run([sys.executable, str(SCORES), "--models", "nope/unknown", "--faces", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error: cannot load --models 'nope/unknown'"), bad.stderr[-500:]
