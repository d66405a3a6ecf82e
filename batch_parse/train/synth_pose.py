"""Turned and profile faces synthesised from frontal ones, with exact labels ("face profiling").

Why: the teacher (MediaPipe face mesh) fails on profiles, so nothing labels them; 300W-LP (Zhu et
al., CVPR 2016) made large-pose training data by fitting a 3-D face to frontal photos and
re-rendering it rotated. The teacher's own mesh is 3-D, so the face pool's frontal faces can be
turned the same way: the mesh is rotated about a vertical axis through the head's centre,
projected orthographically, and the frontal image *and its label map* are carried to each pixel by
the same per-triangle affine map, with a z-buffer and back-face culling, so the far eye and cheek
vanish behind the nose exactly where the pixels do. The labels therefore never disagree with the
rendered image, whatever the pose.

What is outside the face oval (hair, ears, neck, background) has no mesh: rings of anchor
points on rays from the oval's centre carry it. Two lie in the frame's margin and rotate with the
head at a fraction of the oval's depth (hair and ears move with it, but less than the face); one
on the frame's edge and one far outside stay put. At yaw 0 every vertex samples where it lies, so
the input comes back unchanged. Because the outer rings are fixed and every triangle keeps its
orientation or is culled, every output pixel is covered by a front-facing triangle: newly exposed
areas show stretched hair or background (the frame's edge pixels beyond it), never black. That
region is labelled background.

The turned face is then re-framed as inference frames a detected face: five detector-like points
(eye centres, nose tip, mouth corners from the mesh) fitted to the alignment TEMPLATE
(batch_parse.faces.align), composed into the render so that the frame is sampled once.

Use, on a face pool (facepool.py keeps each labelled face's mesh as mesh/NAME.npy): sources are
faces whose teacher labels are clean and whose own yaw is small (|mesh_yaw| under ~15 degrees),
turned further the way they already look (the sign of mesh_yaw; see turn_face):

    turned = turn_face(image, np.load(pool / "mesh" / f"{name}.npy"), class_map, yaw)

Speed: about 10 ms of one CPU core per face at 256 px (benchmarks/synth_pose_sheet.py).

Coordinates: the mesh as teacher.mesh_rgb gives it (continuous pixels, a pixel spans [i, i+1);
z on x's scale, smaller = nearer). Everything inside works in pixel-index coordinates (a pixel's
centre at its integer index), as align.py does.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from batch_parse.faces.align import TEMPLATE, similarity
from batch_parse.labels import BACKGROUND

MESH_POINTS = 478  # teacher.mesh_rgb: 468 face points + 10 iris points (refine_landmarks)
# Points of the face oval at the ears' level (MediaPipe 234 image-left, 454 image-right on a
# frontal face): the deepest points of the mesh, and the ones the head turns about.
EAR_POINTS = (234, 454)
# Detector-like points: iris centres (MTCNN marks the pupils), nose, mouth corners. MTCNN's nose
# point sits ~3% of the frame above the mesh's nose tip (1) on frontal faces, between 1 and 4.
IRIS_CENTRES = (468, 473)
NOSE = (1, 4)
MOUTH_CORNERS = (61, 291)
# Where MTCNN puts its points on turned faces, relative to the mesh's projected points, in frame
# sides per unit of (1 - cos yaw), towards the turn: the far eye and far mouth corner, hidden or
# foreshortened, are marked near the silhouette, the nose a little inside its tip. Fitted on 21
# CFP frontal faces turned to 30/60/80 degrees so that MTCNN agrees with the shifted points in the
# frame they make: `benchmarks/synth_pose_sheet.py --check-detector 24` leaves every mean offset
# within 0.03 of the frame's side (without the shift: far eye +0.10, far mouth corner +0.11 at 80).
DETECTOR_SHIFT = {"far_eye": 0.11, "far_mouth": 0.11, "nose": -0.07}
# The yaw axis lies a little behind the mesh's deepest points: those are the cheeks in front of
# the ears, and the neck the head turns on is behind them. As a fraction of the ear-to-ear width.
AXIS_BEHIND = 0.10
# Anchor rings outside the oval: how far each lies from the oval to the frame's edge (along rays
# from the oval's centre), and the share of the oval's depth (relative to the axis) it keeps
# when rotating; None: fixed. Beyond the edge, one more fixed ring at OUTER_SCALE times the oval
# keeps the frame covered however the re-framing moves it.
RINGS: tuple[tuple[float, float | None], ...] = ((0.35, 0.6), (0.7, 0.25), (1.0, None))
OUTER_SCALE = 8.0
# Triangles' signs are taken with a little slack so that pixels on a shared edge are drawn.
_EDGE_EPS = 1e-6


class TurnedFace(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8, the turned face in its own aligned frame
    labels: np.ndarray  # (H, W) uint8, the input's classes carried by the same map
    landmarks: np.ndarray  # (5, 2) float64 detector-like points in that frame (align's order)
    mesh: np.ndarray  # (478, 3) the turned mesh in that frame, as teacher.mesh_rgb lays it out
    #                   (z on x's scale, relative to the head's centre)


def mesh_yaw(mesh: np.ndarray) -> float:
    """A mesh's yaw in turn_face's convention (degrees; positive = the image-right ear point is
    the farther), from the ear points' depths: for choosing turns from the input's own pose."""
    ears = np.asarray(mesh, np.float64)[list(EAR_POINTS)]
    left, right = ears[np.argsort(ears[:, 0])]
    return math.degrees(math.atan2(right[2] - left[2], right[0] - left[0]))


@functools.cache
def _topology() -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """(face triangles, consistently oriented, over mesh points + one centre per hole; the oval
    cycle; the holes' cycles). Holes (eyes, inner mouth) are closed by fans from their centres,
    so that what the frontal image shows there (eyeballs, teeth) turns with the face."""
    from mediapipe.python.solutions import face_mesh_connections as fmc

    from batch_parse.train.teacher import _chains

    edges = {tuple(sorted(e)) for e in fmc.FACEMESH_TESSELATION}
    neighbours: dict[int, set[int]] = defaultdict(set)
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    # The tessellation is published as edges only: its triangles are the 3-cliques, less two
    # phantom cliques at the nostrils whose every edge already borders two real triangles.
    cliques = sorted({tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]})
    uses: dict[tuple[int, int], int] = defaultdict(int)
    for t in cliques:
        for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])):
            uses[e] += 1
    triangles = [t for t in cliques if not all(uses[e] == 3 for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])))]
    count: dict[tuple[int, int], int] = defaultdict(int)
    for t in triangles:
        for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])):
            count[e] += 1
    oval = _chains(frozenset(tuple(sorted(e)) for e in fmc.FACEMESH_FACE_OVAL))[0]
    oval_edges = {tuple(sorted(e)) for e in fmc.FACEMESH_FACE_OVAL}
    holes = _chains(frozenset(e for e, n in count.items() if n == 1 and e not in oval_edges))
    if len(triangles) != 852 or len(oval) != 36 or sorted(len(h) for h in holes) != [16, 16, 20]:
        raise RuntimeError(f"unexpected MediaPipe tessellation: {len(triangles)} triangles, holes {[len(h) for h in holes]}")
    for k, hole in enumerate(holes):
        centre = MESH_POINTS + k
        triangles += [(hole[i], hole[(i + 1) % len(hole)], centre) for i in range(len(hole))]
    return _orient(np.array(triangles)), np.array(oval), holes


def _orient(triangles: np.ndarray) -> np.ndarray:
    """The same triangles, each listed so that neighbours run their shared edge in opposite
    directions: one consistent orientation, so that a sign of projected area means front or back."""
    by_edge: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, t in enumerate(triangles):
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
            by_edge[(min(a, b), max(a, b))].append(i)
    out = triangles.copy()
    done = np.zeros(len(triangles), bool)
    for seed in range(len(triangles)):
        if done[seed]:
            continue
        done[seed] = True
        stack = [seed]
        while stack:
            i = stack.pop()
            t = out[i]
            for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
                for j in by_edge[(min(a, b), max(a, b))]:
                    if done[j]:
                        continue
                    u = out[j]
                    # Neighbour j must run b -> a; if it runs a -> b, flip it.
                    if any((u[k], u[(k + 1) % 3]) == (a, b) for k in range(3)):
                        out[j] = u[[0, 2, 1]]
                    done[j] = True
                    stack.append(j)
    return out


@functools.cache
def _band_triangles() -> np.ndarray:
    """Quad strips between the oval and each ring in turn, over the extended vertex list, oriented
    as the face's triangles are (they run each oval edge the other way)."""
    face, oval, holes = _topology()
    n = len(oval)
    first = MESH_POINTS + len(holes)
    loops = [oval] + [first + k * n + np.arange(n) for k in range(len(RINGS) + 1)]
    tris = []
    for inner, outer in zip(loops, loops[1:]):
        for i in range(n):
            j = (i + 1) % n
            tris += [(inner[i], inner[j], outer[j]), (inner[i], outer[j], outer[i])]
    tris = np.array(tris)
    face_edges = {(t[k], t[(k + 1) % 3]) for t in face for k in range(3)}
    if (oval[0], oval[1]) in face_edges:  # the strip above runs oval[0] -> oval[1] too: flip it
        tris = tris[:, [0, 2, 1]]
    return tris


def _signed_area(xy: np.ndarray, tris: np.ndarray) -> np.ndarray:
    a, b, c = xy[tris[:, 0]], xy[tris[:, 1]], xy[tris[:, 2]]
    return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """(3,3) acting on (x, y, z) offsets from the head's centre. Positive yaw turns the face
    towards the image's right (the nose moves right, the image-right cheek goes away); positive
    pitch tilts it down (the nose moves down)."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    yaw = np.array([[math.cos(y), 0.0, -math.sin(y)], [0.0, 1.0, 0.0], [math.sin(y), 0.0, math.cos(y)]])
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(p), -math.sin(p)], [0.0, math.sin(p), math.cos(p)]])
    return pitch @ yaw


def _vertices(mesh: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the extended vertex list (mesh points, hole centres, anchor rings): where each vertex
    samples the input, its 3-D position relative to the head's centre, and whether it stays put."""
    _, oval, holes = _topology()
    pts = np.asarray(mesh, np.float64).copy()
    pts[:, :2] -= 0.5  # continuous pixels -> pixel-index coordinates
    ears = pts[list(EAR_POINTS)]
    ear_to_ear = float(np.linalg.norm(ears[1, :2] - ears[0, :2]))
    centre = np.array([ears[:, 0].mean(), ears[:, 1].mean(), ears[:, 2].mean() + AXIS_BEHIND * ear_to_ear])
    hole_centres = np.stack([pts[h].mean(axis=0) for h in holes])
    face = np.concatenate([pts, hole_centres])
    oval_pts = face[oval]
    mid = oval_pts[:, :2].mean(axis=0)
    ray = oval_pts[:, :2] - mid
    # How far each ray from the oval's centre through an oval point runs before it leaves the
    # frame, in units of that oval point (1 where the oval itself reaches past the frame).
    limits = np.where(ray > 0, (np.array([width - 1, height - 1]) - mid) / np.where(ray > 0, ray, 1), np.inf)
    limits = np.minimum(limits, np.where(ray < 0, -mid / np.where(ray < 0, ray, -1), np.inf))
    to_edge = np.maximum(limits.min(axis=1), 1.0)[:, None]
    samples, positions, fixed = [face[:, :2]], [face], [np.zeros(len(face), bool)]
    for where, depth in RINGS:
        xy = mid + (1 + (to_edge - 1) * where) * ray
        samples.append(xy)
        positions.append(np.column_stack([xy, centre[2] + (oval_pts[:, 2] - centre[2]) * (depth or 0.0)]))
        fixed.append(np.full(len(oval), depth is None))
    # The outer ring samples where it is: an identity map inside the frame (its corners, which the
    # frame-edge ring cuts off), the frame's edge pixels repeated outside it.
    far = mid + np.maximum(OUTER_SCALE, 2 * to_edge) * ray
    samples.append(far)
    positions.append(np.column_stack([far, np.full(len(oval), centre[2])]))
    fixed.append(np.ones(len(oval), bool))
    return np.concatenate(samples), np.concatenate(positions) - centre, np.concatenate(fixed)


def turn_face(image: np.ndarray, mesh: np.ndarray, labels: np.ndarray, yaw_deg: float, pitch_deg: float = 0.0,
              reframe: bool = True) -> TurnedFace:
    """The face of an aligned frame turned by yaw_deg (and pitch_deg), re-framed as inference
    frames a detected face of that pose. image (H, W, 3) uint8; mesh (478, 3) as
    teacher.mesh_rgb gives it for this image; labels (H, W) uint8 class map of this image.

    The rotation is relative to the input's own pose (mesh_yaw tells it): yaw 0 with
    reframe=False gives back the input up to resampling (reframe=False keeps the input's frame,
    for checks and figures). The output has the input's size. Surfaces the input does not show
    (the far side of the nose of a face already turned a little) have no pixels of their own:
    turning towards them smears what hides them, so turn a face further the way it already looks
    (the sign of mesh_yaw), or only by small angles the other way."""
    height, width = labels.shape
    if image.shape != (height, width, 3) or np.shape(mesh) != (MESH_POINTS, 3) or height != width:
        raise ValueError(f"image {image.shape}, labels {labels.shape} and mesh {np.shape(mesh)} do not match "
                         f"a square aligned frame with its {MESH_POINTS}-point teacher mesh")
    face_tris, _, _ = _topology()
    bands = _band_triangles()
    src, rel, fixed = _vertices(mesh, height, width)
    centre_xy = src[0] - rel[0, :2]
    turned = rel @ _rotation(yaw_deg, pitch_deg).T
    # The fixed rings stay where they are, behind everything that turns.
    turned[fixed, :2] = rel[fixed, :2]
    turned[fixed, 2] = np.abs(rel[:, :2]).max() * 10
    xy = turned[:, :2] + centre_xy
    five = _detector_points(xy, yaw_deg, height)
    frame = _frame(five, height) if reframe else np.eye(2, 3)
    out_xy = xy @ frame[:, :2].T + frame[:, 2]
    scale = math.sqrt(abs(np.linalg.det(frame[:, :2])))
    depth = turned[:, 2] * scale

    tris = np.concatenate([face_tris, bands])
    is_band = np.zeros(len(tris), bool)
    is_band[len(face_tris):] = True
    # Front or back: the sign the whole face has in the input (the frontal view), not each
    # triangle's own, so that one the input already shows edge-on or from behind stays culled.
    # (The sign depends on the mesh: a mirrored one has the other.)
    facing = np.sign(_signed_area(src, face_tris).sum())
    front = _signed_area(out_xy, tris) * facing > 0
    tris, is_band = tris[front], is_band[front]
    winner, l1, l2 = _rasterise(out_xy, depth, tris, height, width)
    covered = winner >= 0
    if not covered.all():  # only where the fixed rings do not reach round the re-framed frame
        winner, l1, l2 = _fill_nearest(winner, l1, l2)
    t = tris[winner]
    a, b, c = src[t[..., 0]], src[t[..., 1]], src[t[..., 2]]
    sx = a[..., 0] + l1 * (b[..., 0] - a[..., 0]) + l2 * (c[..., 0] - a[..., 0])
    sy = a[..., 1] + l1 * (b[..., 1] - a[..., 1]) + l2 * (c[..., 1] - a[..., 1])
    out_image = _bilinear(image, sx, sy)
    xi = np.clip(np.rint(sx), 0, width - 1).astype(np.intp)
    yi = np.clip(np.rint(sy), 0, height - 1).astype(np.intp)
    out_labels = np.where(is_band[winner], BACKGROUND, labels[yi, xi]).astype(np.uint8)
    landmarks = five @ frame[:, :2].T + frame[:, 2]
    out_mesh = np.column_stack([out_xy[:MESH_POINTS] + 0.5, depth[:MESH_POINTS]])
    return TurnedFace(out_image, out_labels, landmarks, out_mesh)


def _frame(five: np.ndarray, side: int) -> np.ndarray:
    """(2,3) map into the aligned frame of `side` px: align.fit's, at a side fixed by the caller."""
    frame = similarity(five, TEMPLATE) * side
    frame[:, 2] -= 0.5
    return frame


def _detector_points(xy: np.ndarray, yaw_deg: float, side: int) -> np.ndarray:
    """(5,2) points, in align's order (eyes and mouth corners image-left first), where MTCNN would
    mark the turned face: the mesh's points, moved by DETECTOR_SHIFT in the frame they give."""
    five = np.stack([xy[IRIS_CENTRES[0]], xy[IRIS_CENTRES[1]], xy[list(NOSE)].mean(axis=0), xy[MOUTH_CORNERS[0]], xy[MOUTH_CORNERS[1]]])
    five[:2] = five[:2][np.argsort(five[:2, 0])]  # by image side, whatever the mesh calls them
    five[3:] = five[3:][np.argsort(five[3:, 0])]
    towards = math.copysign(1.0, yaw_deg) * (1.0 - math.cos(math.radians(yaw_deg)))
    if towards == 0.0:
        return five
    far = (1, 4) if yaw_deg > 0 else (0, 3)
    shift = np.zeros((5, 2))
    shift[far[0], 0] = DETECTOR_SHIFT["far_eye"] * towards
    shift[far[1], 0] = DETECTOR_SHIFT["far_mouth"] * towards
    shift[2, 0] = DETECTOR_SHIFT["nose"] * towards
    frame = _frame(five, side)
    moved = five @ frame[:, :2].T + frame[:, 2] + shift * side
    a = frame[:, :2]
    return (moved - frame[:, 2]) @ np.linalg.inv(a).T


def _rasterise(xy: np.ndarray, depth: np.ndarray, tris: np.ndarray, height: int, width: int):
    """Per pixel centre: the nearest triangle covering it (-1 if none) and its barycentric
    coordinates (l1, l2) there. Scanlines, all at once: every (triangle, row) pair gets the span
    of pixel centres inside it, the spans are expanded into one flat array of candidate pixels,
    and the z-buffer is a scatter-min over them; barycentrics are worked out for winners only."""
    a, b, c = xy[tris[:, 0]], xy[tris[:, 1]], xy[tris[:, 2]]
    e1, e2 = b - a, c - a
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ymin = np.minimum(np.minimum(a[:, 1], b[:, 1]), c[:, 1])
    ymax = np.maximum(np.maximum(a[:, 1], b[:, 1]), c[:, 1])
    y0 = np.clip(np.ceil(ymin - _EDGE_EPS), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(ymax + _EDGE_EPS) + 1, 0, height).astype(np.int64)
    rows = np.maximum(y1 - y0, 0)
    rows[np.abs(det) < 1e-12] = 0  # degenerate: covers nothing
    # (triangle, row) pairs.
    tri = np.repeat(np.arange(len(tris)), rows)
    y = (np.repeat(y0 - np.cumsum(rows) + rows, rows) + np.arange(len(tri))).astype(np.float64)
    lo = np.full(len(tri), np.inf)
    hi = np.full(len(tri), -np.inf)
    for p, q in ((a, b), (b, c), (c, a)):
        py, qy = p[tri, 1], q[tri, 1]
        dy = qy - py
        crosses = (np.minimum(py, qy) - _EDGE_EPS <= y) & (y <= np.maximum(py, qy) + _EDGE_EPS)
        t = np.clip(np.divide(y - py, dy, out=np.zeros_like(y), where=dy != 0), 0.0, 1.0)
        xs = p[tri, 0] + t * (q[tri, 0] - p[tri, 0])
        flat = crosses & (dy == 0)  # a horizontal edge on this row: both its ends count
        lo = np.where(crosses, np.minimum(lo, np.where(flat, np.minimum(p[tri, 0], q[tri, 0]), xs)), lo)
        hi = np.where(crosses, np.maximum(hi, np.where(flat, np.maximum(p[tri, 0], q[tri, 0]), xs)), hi)
    x0 = np.clip(np.ceil(lo - _EDGE_EPS), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(hi + _EDGE_EPS) + 1, 0, width).astype(np.int64)
    span = np.maximum(x1 - x0, 0)
    # Depth along a row is linear: its value at the span's start and its step per pixel.
    zc = np.stack([depth[tris[:, 0]], depth[tris[:, 1]] - depth[tris[:, 0]], depth[tris[:, 2]] - depth[tris[:, 0]]], 1)
    inv = np.divide(1.0, det, out=np.zeros_like(det), where=np.abs(det) >= 1e-12)
    # d(l1)/dx, d(l1)/dy, d(l2)/dx, d(l2)/dy per triangle
    g = np.stack([e2[:, 1] * inv, -e2[:, 0] * inv, -e1[:, 1] * inv, e1[:, 0] * inv], 1)
    dzdx = zc[:, 1] * g[:, 0] + zc[:, 2] * g[:, 2]
    dzdy = zc[:, 1] * g[:, 1] + zc[:, 2] * g[:, 3]
    z_row = zc[tri, 0] + dzdx[tri] * (x0 - a[tri, 0]) + dzdy[tri] * (y - a[tri, 1])
    # Candidates: each pair's span expanded.
    pair = np.repeat(np.arange(len(tri)), span)
    step = np.arange(len(pair)) - np.repeat(np.cumsum(span) - span, span)
    z = z_row[pair] + dzdx[tri[pair]] * step
    pix = (y[pair].astype(np.int64) * width) + x0[pair] + step
    zbuf = np.full(height * width, np.inf)
    np.minimum.at(zbuf, pix, z)
    win = z <= zbuf[pix]
    winner = np.full(height * width, -1, np.int64)
    winner[pix[win]] = tri[pair[win]]
    winner = winner.reshape(height, width)
    # Barycentrics of each pixel centre in its winning triangle.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    w = np.maximum(winner, 0)
    dx, dy = xx - a[w, 0], yy - a[w, 1]
    l1 = g[w, 0] * dx + g[w, 1] * dy
    l2 = g[w, 2] * dx + g[w, 3] * dy
    return winner, l1, l2


def _fill_nearest(winner: np.ndarray, l1: np.ndarray, l2: np.ndarray):
    """Uncovered pixels take the map of a covered neighbour, growing inwards ring by ring."""
    winner, l1, l2 = winner.copy(), l1.copy(), l2.copy()
    for _ in range(sum(winner.shape)):
        empty = winner < 0
        if not empty.any() or empty.all():
            break
        # Each of the four neighbours in turn: pixel [dst] takes from pixel [src].
        for dst, src in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                         ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                         ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                         ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
            take = empty[dst] & (winner[src] >= 0)
            for arr in (winner, l1, l2):
                arr[dst][take] = arr[src][take]
            empty[dst] &= ~take
    return winner, l1, l2


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """image sampled at pixel-index coordinates (x, y), edge pixels repeated outside it (only
    mesh points just past a tight frame's edge, e.g. the top of the forehead, sample there)."""
    h, w = image.shape[:2]
    src = torch.as_tensor(np.asarray(image, np.float32)).permute(2, 0, 1)[None]
    grid = torch.from_numpy(np.stack([x * (2.0 / (w - 1)) - 1.0, y * (2.0 / (h - 1)) - 1.0], -1)).float()[None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
