"""Parse quality of a face, defined once: what render sorts by and every export carries.

parse score: the mean of the face's six part confidences (`<part>_confidence`, the mean stage-2
probability over the pixels labelled as that part), where a part the model did not find in its
window counts 0. So 1.0 is six parts found with certainty, and a face with a part missing (a
profile's hidden eye, a mouth behind a hand) scores lower than the same face with all six: those
are the faces to look at first. Confidences that are null (rows without a parse) are left out;
a row with none has no score (None / NaN).

face size: the shorter side of the detector box in pixels (for whole-image rows, of the image),
the size `render --min-face` and the exports' filters compare with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from batch_parse.labels import PART_NAMES

CONFIDENCE_COLUMNS: tuple[str, ...] = tuple(f"{p}_confidence" for p in PART_NAMES)
PARSE_SCORE = "parse_score"  # the name the score goes by in every export (a field, attribute or column)
PARSE_SCORE_DOC = ("mean of the six part confidences, a part not found in its window counting 0 "
                   "(1 = all six parts found with certainty)")  # fmt: skip


def parse_scores(confidences: np.ndarray) -> np.ndarray:
    """(n, 6) part confidences (NaN = null) -> (n,) parse scores, NaN where a row has no confidence."""
    confidences = np.asarray(confidences, np.float64).reshape(-1, len(PART_NAMES))
    finite = np.isfinite(confidences)
    counts = finite.sum(axis=1)
    totals = np.where(finite, confidences, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def parse_score(confidences: Sequence[float | None]) -> float | None:
    """One face's parse score from its six part confidences (None for nulls); None when all are null."""
    value = parse_scores(np.array([[np.nan if c is None else c for c in confidences]], np.float64))[0]
    return None if np.isnan(value) else float(value)


def parts_found(confidences: Sequence[float | None]) -> int:
    """How many of the six parts the model found in their windows (confidence > 0)."""
    return sum(1 for c in confidences if c is not None and c > 0)


def face_size(box: Sequence[float] | None) -> float | None:
    """The shorter side of a face box [x0, y0, x1, y1] in pixels; None without a box."""
    if box is None or not np.all(np.isfinite(np.asarray(box, np.float64))):
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    return min(x1 - x0, y1 - y0)
