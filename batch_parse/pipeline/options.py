"""Options of one labeling job: what `batch-parse run` flags and job-spec YAML files both fill in."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from batch_parse.storage.location import Location, parse_location
from batch_parse.faces.policy import DEFAULT_POLICY, FACE_MODES, InferencePolicy  # noqa: F401 (FACE_MODES: re-exported)
from batch_parse.model.registry import DEFAULT

CROP_FORMATS = ("jpeg", "png")
SOURCE_FORMATS = ("auto", "files", "webdataset", "parquet")  # storage/sources.py
DEFAULT_MODEL = DEFAULT  # model.registry's: one name for the default weights
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
    endpoint_url: str | None = None  # S3-compatible store (MinIO, SeaweedFS, R2...) of source and output; None = AWS
    source_endpoint_url: str | None = None  # the source's store when it differs (wins over endpoint_url)
    output_endpoint_url: str | None = None  # the output's store when it differs (wins over endpoint_url)
    source_anonymous: bool = False  # read the source with unsigned requests (a public bucket), no credentials
    source_profile: str | None = None  # AWS profile (~/.aws) for the source's store instead of the default chain
    output_profile: str | None = None  # AWS profile for the output's store
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
    source_format: str = "auto"  # files, webdataset (tar shards) or parquet (image tables); auto: by the listed extensions
    image_column: str = "image"  # Parquet sources: the column of image bytes (binary, or HF's {bytes, path} struct)
    key_column: str | None = None  # Parquet sources: the column naming each image (source_key); None: the row number
    retry_errors: bool = True  # redo images whose rows are retryable errors (output/errors.py) from earlier runs
    rows_per_file: int = 1000  # bounds output Parquet file size (crops make rows ~50-200 KB)
    device: str | None = None  # None: cuda when the actor has a GPU, else cpu
    # The inference policy (faces/policy.py owns their defaults, help and checks): `policy` below.
    faces: str = DEFAULT_POLICY.faces  # FACE_MODES
    detector: str = DEFAULT_POLICY.detector  # face detector name (batch_parse.faces)
    min_face: int = DEFAULT_POLICY.min_face  # smallest face to detect, pixels
    detector_threshold: float = DEFAULT_POLICY.detector_threshold  # final detector score to keep a face
    extra: dict = field(default_factory=dict)  # reserved for forward-compatible spec keys

    def source_location(self) -> Location:
        """The source, parsed, with the store it is read from (ValueError on a bad one)."""
        return parse_location(self.source, self.source_endpoint_url or self.endpoint_url, anonymous=self.source_anonymous,
                              profile=self.source_profile)

    def output_location(self) -> Location:
        """The output, parsed, with the store it is written to (ValueError on a bad one)."""
        return parse_location(self.output, self.output_endpoint_url or self.endpoint_url, profile=self.output_profile)

    @property
    def policy(self) -> InferencePolicy:
        """The run's inference policy (faces, detector, min_face, detector_threshold)."""
        return InferencePolicy.of(self)

    def validate(self) -> list[str]:
        """Every problem with these options, one line each (empty list = valid)."""
        problems = [f"{name}: must not contain a NUL character" for name in _PATH_OPTIONS if "\0" in (getattr(self, name) or "")]
        for name, (low, high) in _INT_BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and value < low:
                problems.append(f"{name}: must be >= {low}, got {value}")
            elif isinstance(value, int) and not isinstance(value, bool) and value > high:
                problems.append(f"{name}: must be <= {high:,}, got {value:,}")
        if not self.source:
            problems.append("source: must be an s3:// URI or a local folder")
        if not self.output:
            problems.append("output: must be an s3:// URI or a local folder")
        if 1 <= self.max_actors < self.min_actors <= _INT_BOUNDS["min_actors"][1]:
            problems.append(f"max_actors: must be >= min_actors ({self.min_actors}), got {self.max_actors}")
        if self.gpus_per_actor is not None and not 0 <= self.gpus_per_actor <= _MAX_RESOURCE:
            problems.append(f"gpus_per_actor: must be in 0..{_MAX_RESOURCE}, got {self.gpus_per_actor}")
        if not 0 < self.cpus_per_actor <= _MAX_RESOURCE:
            problems.append(f"cpus_per_actor: must be > 0 and <= {_MAX_RESOURCE}, got {self.cpus_per_actor}")
        if self.source_anonymous and self.source_profile:
            problems.append("source_profile: an anonymous source sends no credentials; give one of source_anonymous, source_profile")
        if self.source_format not in SOURCE_FORMATS:
            problems.append(f"source_format: must be one of {', '.join(SOURCE_FORMATS)}, got {self.source_format!r}")
        if not self.image_column:
            problems.append("image_column: must name a column")
        if self.crop_format not in CROP_FORMATS:
            problems.append(f"crop_format: must be one of {', '.join(CROP_FORMATS)}, got {self.crop_format!r}")
        return problems + self.policy.problems()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]


_MAX_RESOURCE = 1024  # GPUs or CPUs per actor: a node has far fewer; also refuses .inf and NaN
# Options that name a path or URL: a NUL in one cannot name anything (and would be cut short by C APIs).
_PATH_OPTIONS = ("source", "output", "model", "endpoint_url", "source_endpoint_url", "output_endpoint_url", "object_list")
# Every integer option's range: wide enough for any real job, narrow enough that a typo such as
# `batch_size: 100000000000000000000` is named by `validate` instead of failing inside Ray or Arrow.
_INT_BOUNDS = {
    "batch_size": (1, 65_536),  # images per model call; a GPU batch is tens to hundreds
    "min_actors": (1, 10_000),
    "max_actors": (1, 10_000),
    "jpeg_quality": (1, 100),
    "max_pixels": (1, 2_000_000_000),  # Pillow refuses more than ~179 MP anyway; this bounds the int
    "max_bytes": (1, 1 << 40),  # 1 TiB
    "fetch_attempts": (1, 100),
    "rows_per_file": (1, 10_000_000),
}
