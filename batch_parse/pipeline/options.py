"""Options of one labeling job: what `batch-parse run` flags and job-spec YAML files both fill in."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

CROP_FORMATS = ("jpeg", "png")
# all: every face the detector finds is a row; largest: only the largest face of each photo;
# whole-image: no detector, each image is one face (corpora of aligned crops, v1 behaviour).
FACE_MODES = ("all", "largest", "whole-image")
DEFAULT_DETECTOR = "mtcnn"
# Smallest face the detector looks for (box side in pixels): below ~20 px the parser's parts
# are a few pixels wide, and the detector's pyramid (hence its cost) grows as 1/min_face^2.
DEFAULT_MIN_FACE = 20
DEFAULT_MODEL = "stn-icnn/default"
# Pillow refuses more than 2x its own limit (~179 MP); we cap lower: a 50 MP photo is
# ~150 MB as RGB, which is already more than a worker should hold per image.
DEFAULT_MAX_PIXELS = 50_000_000
# Objects above this are refused from their listed size, never fetched: a worker holds the whole
# encoded object in memory (a 3 GB file named .jpg took 3.7 GB before decode could refuse it).
DEFAULT_MAX_BYTES = 200_000_000
# Tries per object on S3 when the store fails in a way that can pass (storage/fetch.py).
DEFAULT_FETCH_ATTEMPTS = 4


@dataclass
class JobOptions:
    source: str  # s3://bucket/prefix or a local folder
    output: str  # s3://bucket/prefix or a local folder
    model: str = DEFAULT_MODEL  # registry name or path to a .safetensors file
    endpoint_url: str | None = None  # S3-compatible store (MinIO, SeaweedFS, R2...); None = AWS
    batch_size: int = 16  # images per model call
    min_actors: int = 1
    max_actors: int = 1
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU actors)
    cpus_per_actor: float = 1.0
    crop_format: str = "jpeg"
    jpeg_quality: int = 90
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES  # largest source object to fetch, in bytes
    fetch_attempts: int = DEFAULT_FETCH_ATTEMPTS  # tries per S3 object on errors that can pass, with backoff
    object_list: str | None = None  # read the source's keys from this object list (S3 Inventory, Parquet of keys) instead of listing
    retry_errors: bool = True  # redo images whose rows are retryable errors (pipeline/errors.py) from earlier runs
    rows_per_file: int = 1000  # bounds output Parquet file size (crops make rows ~50-200 KB)
    device: str | None = None  # None: cuda when the actor has a GPU, else cpu
    faces: str = "all"  # FACE_MODES
    detector: str = DEFAULT_DETECTOR  # face detector name (batch_parse.faces)
    min_face: int = DEFAULT_MIN_FACE  # smallest face to detect, pixels
    detector_threshold: float | None = None  # final detector score to keep a face; None: the detector's default
    extra: dict = field(default_factory=dict)  # reserved for forward-compatible spec keys

    def validate(self) -> list[str]:
        """Every problem with these options, one line each (empty list = valid)."""
        problems = []
        if not self.source:
            problems.append("source: must be an s3:// URI or a local folder")
        if not self.output:
            problems.append("output: must be an s3:// URI or a local folder")
        if self.batch_size < 1:
            problems.append(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.min_actors < 1:
            problems.append(f"min_actors: must be >= 1, got {self.min_actors}")
        if self.max_actors < self.min_actors:
            problems.append(f"max_actors: must be >= min_actors ({self.min_actors}), got {self.max_actors}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            problems.append(f"gpus_per_actor: must be >= 0, got {self.gpus_per_actor}")
        if self.cpus_per_actor <= 0:
            problems.append(f"cpus_per_actor: must be > 0, got {self.cpus_per_actor}")
        if self.crop_format not in CROP_FORMATS:
            problems.append(f"crop_format: must be one of {', '.join(CROP_FORMATS)}, got {self.crop_format!r}")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality: must be in 1..100, got {self.jpeg_quality}")
        if self.max_pixels < 1:
            problems.append(f"max_pixels: must be >= 1, got {self.max_pixels}")
        if self.faces not in FACE_MODES:
            problems.append(f"faces: must be one of {', '.join(FACE_MODES)}, got {self.faces!r}")
        if self.min_face < 1:
            problems.append(f"min_face: must be >= 1 pixel, got {self.min_face}")
        if self.detector_threshold is not None and not 0 < self.detector_threshold < 1:
            problems.append(f"detector_threshold: must be in (0, 1), got {self.detector_threshold}")
        if self.rows_per_file < 1:
            problems.append(f"rows_per_file: must be >= 1, got {self.rows_per_file}")
        if self.max_bytes < 1:
            problems.append(f"max_bytes: must be >= 1, got {self.max_bytes}")
        if self.fetch_attempts < 1:
            problems.append(f"fetch_attempts: must be >= 1, got {self.fetch_attempts}")
        return problems

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]
