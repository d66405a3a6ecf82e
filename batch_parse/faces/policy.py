"""The inference policy: which faces a run looks for and keeps. One definition for every door.

`InferencePolicy` (faces, detector, min_face, detector_threshold) is what `batch-parse run` and
`eval` flags, job specs (jobspec.py), JobOptions, the Ray actor (pipeline/stages.py), the output
files' metadata and the benchmarks all read: the names, types, defaults, help texts and checks of
these four options are written here and nowhere else.

The defaults are the detector's own (DETECTOR_DEFAULTS; why these values: "Why MTCNN" in
faces/detector.py, which reads them from here so `detect()` and a run agree). This module imports
neither torch nor the detector, so `batch-parse validate` checks a spec, detector name included,
in one line per problem without loading a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# all: every face the detector finds is a row; largest: only the largest face of each photo;
# whole-image: no detector, each image is one face (corpora of aligned crops, v1 behaviour).
FACE_MODES = ("all", "largest", "whole-image")
WHOLE_IMAGE = "whole-image"


@dataclass(frozen=True)
class DetectorDefaults:
    """A detector's own defaults: the smallest face it searches for and the score a face needs."""

    min_face: int  # pixels: the side of the smallest window searched
    threshold: float  # final score, 0..1


# Every detector `load_detector` knows, with its defaults (measured in faces/detector.py's docstring:
# min_face 20 keeps recall on 10-20 px eye distances at twice the speed of 10; 0.9 trades 0.8
# points of recall for a quarter of the false detections of 0.8).
DETECTOR_DEFAULTS: dict[str, DetectorDefaults] = {"mtcnn": DetectorDefaults(min_face=20, threshold=0.9)}
DETECTORS = tuple(DETECTOR_DEFAULTS)
DEFAULT_DETECTOR = "mtcnn"
# Bounds that catch typos (a min_face of 20000 finds nothing in any photo a worker may decode).
MAX_MIN_FACE = 10_000


@dataclass(frozen=True)
class InferencePolicy:
    """Which faces a run parses; every field has the detector's default and checks itself (`problems`)."""

    faces: str = "all"
    detector: str = DEFAULT_DETECTOR
    min_face: int = DETECTOR_DEFAULTS[DEFAULT_DETECTOR].min_face
    detector_threshold: float = DETECTOR_DEFAULTS[DEFAULT_DETECTOR].threshold

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, values) -> InferencePolicy:
        """The policy held by any object with these attributes (JobOptions, click params)."""
        get = values.get if isinstance(values, dict) else lambda name, default: getattr(values, name, default)
        defaults = cls()
        return cls(**{name: _or_default(get(name, None), getattr(defaults, name)) for name in cls.names()})

    @property
    def detects(self) -> bool:
        return self.faces != WHOLE_IMAGE

    def problems(self) -> list[str]:
        """Every problem with these options, one line each, `key: ...` (empty list = valid)."""
        problems = []
        if self.faces not in FACE_MODES:
            problems.append(f"faces: must be one of {', '.join(FACE_MODES)}, got {self.faces!r}")
        if self.detector not in DETECTORS:
            problems.append(f"detector: unknown face detector {self.detector!r}; known: {', '.join(DETECTORS)}")
        if isinstance(self.min_face, bool) or not isinstance(self.min_face, int) or not 1 <= self.min_face <= MAX_MIN_FACE:
            problems.append(f"min_face: must be a whole number of pixels in 1..{MAX_MIN_FACE:,}, got {self.min_face!r}")
        threshold = self.detector_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            problems.append(f"detector_threshold: must be in (0, 1), got {threshold!r}")
        return problems

    def check(self) -> InferencePolicy:
        """self, or ValueError with every problem on one line."""
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def detect_kwargs(self) -> dict:
        """Keyword arguments of FaceDetector.detect for this policy."""
        return {"min_face": self.min_face, "threshold": self.detector_threshold}

    def metadata(self) -> dict:
        """What each output file records of the run's choices (the detector's are null for whole-image)."""
        meta = asdict(self)
        if not self.detects:
            meta.update(detector=None, min_face=None, detector_threshold=None)
        return meta


def _or_default(value, default):
    return default if value is None else value


DEFAULT_POLICY = InferencePolicy()

# Help texts of the four options, shared by the CLI verbs that take them (run, eval).
HELP = {
    "faces": "all: a row per detected face; largest: the largest face only; whole-image: no detector, "
             "each image is one face (aligned crops).",
    "detector": "Face detector.",
    "min_face": "Smallest face to detect: the side, in pixels, of the smallest window searched.",
    "detector_threshold": "Detector score a face needs, in (0, 1).",
}  # fmt: skip
# Types a job spec accepts for each (jobspec.py); null for the threshold means the detector's default.
SPEC_TYPES = {"faces": (str,), "detector": (str,), "min_face": (int,), "detector_threshold": (float, type(None))}
