"""How a corrected whole-photo mask goes back into the faces it came from.

The tools show one class map per photo: the union of its faces' label maps (output/codec.add_face:
faces in face_index order, a later face filling only what earlier ones left as background). A
reviewer edits that map. Here it is split back into one label map per face, over each face's own
region (the row's label map: placed at label_map_x/_y, its size unchanged):

- A pixel the reviewer did not change keeps every face's label as the original row has it, so a
  face nobody touched comes back exactly as it was (its label_map bytes are kept as they are).
- A changed pixel the reviewer painted with a part goes to one face: the face the tool says it
  edited where it says so (Label Studio keeps our result id `face<N>-<class>` on a region edited
  from our predictions), else the face whose part it was in the original union, else, for a new
  part on former background, the face whose region holds it with the nearest face-box centre.
  That face gets the class; faces before it in face_index order are cleared there, so the union
  of the new rows shows what the reviewer drew.
- A changed pixel the reviewer erased (now background) is cleared in every face whose region holds it.
- A part drawn where no face's region reaches has no row to go to: it is left out and counted.

So the union of the returned maps equals the reviewer's map on every pixel some face's region
covers (tests/test_import.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from batch_parse.output.codec import add_face


@dataclass
class FaceRegion:
    """One face row of the original: its label map over its region of the photo, and its box."""

    index: int  # face_index
    label_map: np.ndarray  # (h, w) uint8
    x: int
    y: int
    box: np.ndarray | None  # [x0, y0, x1, y1] original pixels

    def bounds(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the region clipped to the photo."""
        h, w = self.label_map.shape
        return max(self.x, 0), max(self.y, 0), min(self.x + w, width), min(self.y + h, height)

    def centre(self) -> tuple[float, float]:
        if self.box is not None and np.all(np.isfinite(self.box)):
            return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2
        h, w = self.label_map.shape
        return self.x + (w - 1) / 2, self.y + (h - 1) / 2


def union(faces: list[FaceRegion], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The photo's (height, width) class map as the exports draw it, and per pixel the position in
    `faces` of the face that class came from (-1 for background)."""
    label_map = np.zeros((height, width), np.uint8)
    owner = np.full((height, width), -1, np.int32)
    for position, face in enumerate(faces):
        where, filled = add_face(label_map, face.label_map, face.x, face.y)
        owner[where][filled] = position
    return label_map, owner


@dataclass
class Split:
    maps: list[np.ndarray]  # per face (faces' order), its new (h, w) label map over its region
    changed: list[int]  # per face, pixels of its label map whose class changed
    left_out: int  # painted pixels no face's region covers


def split_photo(faces: list[FaceRegion], corrected: np.ndarray, hint: np.ndarray | None = None) -> Split:
    """Split the reviewer's (height, width) class map back into the faces (module docstring).

    faces: the photo's face rows in face_index order. hint: (height, width) int, the position in
    `faces` the tool says a pixel's region belongs to, -1 where it does not say.
    """
    height, width = corrected.shape
    before, owner = union(faces, width, height)
    maps = [f.label_map.copy() for f in faces]
    ys, xs = np.nonzero(corrected != before)
    if len(ys) == 0:
        return Split(maps, [0] * len(faces), 0)
    bounds = [f.bounds(width, height) for f in faces]
    # inside[k, i]: changed pixel i lies in face k's region.
    inside = np.array([(xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1) for x0, y0, x1, y1 in bounds], bool).reshape(len(faces), -1)
    covered = inside.any(axis=0)
    value = corrected[ys, xs]
    painted = value != 0
    # Which face a painted pixel goes to: the tool's word, else the original owner, else the nearest box centre.
    assign = np.full(len(ys), -1, np.int64)
    if hint is not None:
        said = hint[ys, xs].astype(np.int64)
        valid = (said >= 0) & (said < len(faces))
        ok = np.zeros(len(ys), bool)
        ok[valid] = inside[said[valid], np.flatnonzero(valid)]
        assign[ok] = said[ok]
    was = owner[ys, xs]
    take = (assign < 0) & (was >= 0)
    assign[take] = was[take]
    rest = np.flatnonzero((assign < 0) & covered)
    if len(rest):
        centres = np.array([f.centre() for f in faces], np.float64)
        distance = (xs[rest][None, :] - centres[:, :1]) ** 2 + (ys[rest][None, :] - centres[:, 1:]) ** 2
        distance[~inside[:, rest]] = np.inf
        assign[rest] = distance.argmin(axis=0)
    for k, face in enumerate(faces):
        mine = inside[k]
        if not mine.any():
            continue
        ly, lx = ys - face.y, xs - face.x
        # Erased: background in every face holding the pixel.
        erase = mine & ~painted
        maps[k][ly[erase], lx[erase]] = 0
        # Painted and given to this face: its class here.
        given = mine & painted & (assign == k)
        maps[k][ly[given], lx[given]] = value[given]
        # Painted and given to a later face: cleared here, so that face shows in the union.
        later = mine & painted & (assign > k)
        maps[k][ly[later], lx[later]] = 0
    changed = [int((new != f.label_map).sum()) for new, f in zip(maps, faces)]
    return Split(maps, changed, int((painted & ~covered).sum()))
