"""`inspect`: summary statistics of a job's output, per model version, as lines for a terminal.

Reads only small columns (never label maps or crops) and keeps fixed-size histograms instead
of every value, so memory stays flat however many rows there are; the exception is the
duplicate check on (id, face_index), which holds 16 bytes per row.
Percentiles are nearest-rank (numpy's method="inverted_cdf"), read off those histograms:
confidences to 0.001 (printed to 0.01), areas to within 1% of their value.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_parse.labels import CLASS_NAMES, NUM_CLASSES, PART_NAMES
from batch_parse.model.licence import output_licence
from batch_parse.output.quality import PARSE_SCORE, PARSE_SCORE_DOC
from batch_parse.output.schema import OPTIONAL_COLUMNS, STATUS_ERROR, STATUS_NO_FACE, STATUS_OK, file_class_names
from batch_parse.output.reader import Output, open_output
from batch_parse.storage.location import Location

CONFIDENCE_COLUMNS = tuple(f"{p}_confidence" for p in PART_NAMES)
PIXEL_COLUMNS = tuple(f"pixels_{c}" for c in CLASS_NAMES)
COLUMNS = ("id", "face_index", "key", "status", "error_code", "width", "height", "model_version", PARSE_SCORE,
           *CONFIDENCE_COLUMNS, *PIXEL_COLUMNS)
LOW_SCORE = 0.5  # the cut `inspect` counts below and suggests for `export --where`

CONFIDENCE_BINS = 1000
# Area as a fraction of the image, log-spaced: 1e-8 (a pixel of a 100 MP image) .. 1, ~0.9% per bin.
AREA_EDGES = np.logspace(-8, 0, 2001)
AREA_CENTERS = np.sqrt(AREA_EDGES[:-1] * AREA_EDGES[1:])
CONFIDENCE_CENTERS = (np.arange(CONFIDENCE_BINS) + 0.5) / CONFIDENCE_BINS
HISTOGRAM_TICKS = " ▁▂▃▄▅▆▇█"
HISTOGRAM_BARS = 10
MOST_COMMON_SIZES = 5
DUPLICATE_EXAMPLES = 5


@dataclass
class VersionStats:
    """Running totals for the rows of one model version."""

    files: set[str] = field(default_factory=set)
    rows: int = 0
    ok: int = 0
    errors: int = 0
    no_face: int = 0
    error_codes: Counter = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    ids: list[np.ndarray] = field(default_factory=list)
    face_indexes: list[np.ndarray] = field(default_factory=list)
    class_present: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))
    class_area_sum: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.float64))
    class_area_hist: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, len(AREA_CENTERS)), np.int64))
    confidence_count: np.ndarray = field(default_factory=lambda: np.zeros(len(PART_NAMES), np.int64))
    confidence_sum: np.ndarray = field(default_factory=lambda: np.zeros(len(PART_NAMES), np.float64))
    confidence_hist: np.ndarray = field(default_factory=lambda: np.zeros((len(PART_NAMES), CONFIDENCE_BINS), np.int64))
    sizes: Counter = field(default_factory=Counter)
    score_hist: np.ndarray = field(default_factory=lambda: np.zeros(CONFIDENCE_BINS, np.int64))
    score_sum: float = 0.0
    # (model, weights_sha256, schema_version, source) from file metadata -> the files saying so
    provenance: dict[tuple, set[str]] = field(default_factory=dict)
    # The version's classes as its files' metadata lists them (one model, one list): what is reported.
    class_names: tuple[str, ...] = ()
    licences: set[str] = field(default_factory=set)  # the labels' terms, as the files record them

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        self.ids.append(batch.column("id").to_numpy(zero_copy_only=False).astype(np.int64))
        self.face_indexes.append(pc.fill_null(batch.column("face_index"), -1).to_numpy(zero_copy_only=False).astype(np.int64))
        status = batch.column("status")
        ok = pc.equal(status, STATUS_OK).to_numpy(zero_copy_only=False)
        error = pc.equal(status, STATUS_ERROR).to_numpy(zero_copy_only=False)
        self.ok += int(ok.sum())
        self.errors += int(error.sum())
        self.no_face += int(pc.sum(pc.equal(status, STATUS_NO_FACE)).as_py() or 0)
        if error.any():
            failed = batch.filter(pa.array(error))
            codes = pc.fill_null(failed.column("error_code"), "(no code)").to_pylist()
            for code, key in zip(codes, failed.column("key").to_pylist()):
                self.error_codes[code] += 1
                self.error_examples.setdefault(code, key)
        if not ok.any():
            return
        done = batch.filter(pa.array(ok))
        width = _floats(done.column("width"))
        height = _floats(done.column("height"))
        known = np.isfinite(width) & np.isfinite(height)
        self.sizes.update(zip(width[known].astype(np.int64).tolist(), height[known].astype(np.int64).tolist()))
        image_pixels = width * height
        for c, column in enumerate(PIXEL_COLUMNS):
            pixels = _floats(done.column(column))
            present = (pixels > 0) & (image_pixels > 0)
            share = pixels[present] / image_pixels[present]
            self.class_present[c] += int(present.sum())
            self.class_area_sum[c] += float(share.sum())
            bins = np.clip(np.searchsorted(AREA_EDGES, share, side="right") - 1, 0, len(AREA_CENTERS) - 1)
            self.class_area_hist[c] += np.bincount(bins, minlength=len(AREA_CENTERS))
        scores = _floats(done.column(PARSE_SCORE))
        scores = scores[np.isfinite(scores)]
        self.score_sum += float(scores.sum())
        self.score_hist += np.bincount(np.clip((scores * CONFIDENCE_BINS).astype(np.int64), 0, CONFIDENCE_BINS - 1),
                                       minlength=CONFIDENCE_BINS)  # fmt: skip
        for p, column in enumerate(CONFIDENCE_COLUMNS):
            values = _floats(done.column(column))
            values = values[np.isfinite(values)]
            self.confidence_count[p] += values.size
            self.confidence_sum[p] += float(values.sum())
            bins = np.clip((values * CONFIDENCE_BINS).astype(np.int64), 0, CONFIDENCE_BINS - 1)
            self.confidence_hist[p] += np.bincount(bins, minlength=CONFIDENCE_BINS)

    def duplicate_ids(self) -> tuple[int, list[int]]:
        """How many (id, face_index) rows occur more than once, and a few of their ids."""
        if not self.ids:
            return 0, []
        ids, faces = np.concatenate(self.ids), np.concatenate(self.face_indexes)
        order = np.lexsort((faces, ids))
        ids, faces = ids[order], faces[order]
        repeat = (ids[1:] == ids[:-1]) & (faces[1:] == faces[:-1])
        return int(repeat.sum()), np.unique(ids[1:][repeat])[:DUPLICATE_EXAMPLES].tolist()

    def images(self) -> int:
        return int(np.unique(np.concatenate(self.ids)).size) if self.ids else 0


def _floats(column: pa.Array) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def nearest_rank(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """The smallest value whose cumulative count reaches q of the total (values sorted ascending)."""
    cumulative = np.cumsum(counts)
    if cumulative.size == 0 or cumulative[-1] == 0:
        return float("nan")
    target = max(q * cumulative[-1], 1)
    return float(values[np.searchsorted(cumulative, target - 1e-9)])


def collect_stats(dst: str | Location) -> tuple[Output, dict[str, VersionStats]]:
    """One pass over the output's small columns: (the Output, stats per model_version)."""
    output = open_output(dst)
    versions: dict[str, VersionStats] = {}
    for file, batch in output.batches(COLUMNS, optional=OPTIONAL_COLUMNS):
        meta = file.metadata
        signature = (meta.get("model"), meta.get("weights_sha256"), meta.get("schema_version"), meta.get("source"))
        model_versions = batch.column("model_version")
        in_batch = pc.unique(model_versions).to_pylist()
        for version in in_batch:
            stats = versions.setdefault(version, VersionStats())
            stats.files.add(file.path)
            stats.provenance.setdefault(signature, set()).add(file.path)
            stats.licences.add(output_licence(meta).line())
            names = file_class_names(meta)
            if len(names) > len(stats.class_names):
                stats.class_names = names
            stats.add(batch if len(in_batch) == 1 else batch.filter(pc.equal(model_versions, version)))
    return output, versions


def inspect_output(dst: str | Location) -> list[str]:
    """The report: one block of lines per model version found under dst."""
    output, versions = collect_stats(dst)
    total_rows = sum(s.rows for s in versions.values())
    lines = [
        f"batch-parse output at {output.location.uri}",
        f"{len(output.files)} file(s), {total_rows:,} row(s), {len(versions)} model version(s)",
    ]
    if output.foreign:
        lines.append(f"skipped {len(output.foreign)} Parquet file(s) not written by batch-parse, e.g. {output.relative(output.foreign[0])}")
    for version in sorted(versions):
        lines += [""] + _version_lines(version, versions[version])
    return lines


def _version_lines(version: str, stats: VersionStats) -> list[str]:
    lines = [f"model_version {version}"]
    for (model, weights, schema_version, source), files in sorted(stats.provenance.items(), key=lambda kv: -len(kv[1])):
        lines.append(
            f"  model {model}, weights sha256 {str(weights)[:16]}..., schema v{schema_version}, "
            f"source {source or '(not recorded)'} ({len(files)} file(s))"
        )
    lines += [f"  licence {licence}" for licence in sorted(stats.licences)]
    other = stats.rows - stats.ok - stats.errors - stats.no_face
    lines.append(
        f"  files {len(stats.files)}   images {stats.images():,}   rows {stats.rows:,}: faces {stats.ok:,}   "
        f"no_face {stats.no_face:,}   error {stats.errors:,}" + (f"   other status {other:,}" if other else "")
    )
    duplicates, examples = stats.duplicate_ids()
    if duplicates:
        lines.append(f"  duplicate rows: {duplicates:,} (id, face_index) pair(s) occur more than once (must be 0), "
                     f"e.g. ids {', '.join(map(str, examples))}")
    else:
        lines.append("  duplicate rows: 0 (every (id, face_index) occurs once, as it must)")
    if stats.error_codes:
        lines.append("  errors by code:")
        width = max(len(code) for code in stats.error_codes)
        for code, count in stats.error_codes.most_common():
            lines.append(f"    {code:<{width}}  {count:>8,}   e.g. {stats.error_examples[code]}")
    if stats.ok:
        lines += _score_lines(stats) + _area_lines(stats) + _confidence_lines(stats) + _size_lines(stats)
    return lines


def _score_lines(stats: VersionStats) -> list[str]:
    """The review score first: it is what says which faces to look at (render sorts by it)."""
    count = int(stats.score_hist.sum())
    if not count:
        return ["  parse score: (no values)"]
    q = [nearest_rank(CONFIDENCE_CENTERS, stats.score_hist, x) for x in (0.1, 0.5, 0.9)]
    low = int(stats.score_hist[: int(LOW_SCORE * CONFIDENCE_BINS)].sum())
    return [
        f"  parse score ({PARSE_SCORE_DOC}; low = review first):",
        f"    mean {stats.score_sum / count:5.3f}  p10 {q[0]:4.2f}  p50 {q[1]:4.2f}  p90 {q[2]:4.2f}  0|{_bars(stats.score_hist)}|1",
        f"    {low:,} of {count:,} face(s) below {LOW_SCORE} ({100 * low / count:.1f}%): "
        f"batch-parse export OUTPUT OUT --where \"parse_score < {LOW_SCORE}\", or batch-parse render OUTPUT",
    ]


def _area_lines(stats: VersionStats) -> list[str]:
    # The model's own classes (file metadata): a 9-class model's report has no `skin` line.
    names = stats.class_names or CLASS_NAMES
    width = max(len(n) for n in names)
    lines = [
        f"  classes ({len(names)}, from the files' metadata): {', '.join(names)}",
        "  class area, % of image pixels (present: share of faces with the class; mean/median among those):",
        f"    {'class':<{width}}  {'present':>7}  {'mean':>8}  {'median':>8}",
    ]
    for c, name in enumerate(names):
        present = stats.class_present[c]
        if present:
            mean = f"{100 * stats.class_area_sum[c] / present:7.3f}%"
            median = f"{100 * nearest_rank(AREA_CENTERS, stats.class_area_hist[c], 0.5):7.3f}%"
        else:
            mean = median = f"{'-':>8}"
        lines.append(f"    {name:<{width}}  {100 * present / stats.ok:6.1f}%  {mean}  {median}")
    return lines


def _confidence_lines(stats: VersionStats) -> list[str]:
    width = max(len(n) for n in PART_NAMES)
    lines = [
        "  part confidence (faces; histogram of 0..1 in tenths):",
        f"    {'part':<{width}}  {'mean':>5}  {'p10':>5}  {'p50':>5}  {'p90':>5}  histogram",
    ]
    for p, name in enumerate(PART_NAMES):
        count = stats.confidence_count[p]
        if not count:
            lines.append(f"    {name:<{width}}  (no values)")
            continue
        hist = stats.confidence_hist[p]
        q = [nearest_rank(CONFIDENCE_CENTERS, hist, x) for x in (0.1, 0.5, 0.9)]
        lines.append(
            f"    {name:<{width}}  {stats.confidence_sum[p] / count:5.3f}  {q[0]:5.2f}  {q[1]:5.2f}  {q[2]:5.2f}  0|{_bars(hist)}|1"
        )
    return lines


def _bars(hist: np.ndarray) -> str:
    coarse = hist.reshape(HISTOGRAM_BARS, -1).sum(axis=1)
    top = coarse.max()
    steps = len(HISTOGRAM_TICKS) - 1
    # Any non-empty bar gets at least the lowest tick, so rare values stay visible.
    levels = [0 if n == 0 else max(1, round(steps * n / top)) for n in coarse]
    return "".join(HISTOGRAM_TICKS[level] for level in levels)


def _size_lines(stats: VersionStats) -> list[str]:
    sizes = np.array(list(stats.sizes.keys()), dtype=np.int64).reshape(-1, 2)
    counts = np.array(list(stats.sizes.values()), dtype=np.int64)
    lines = ["  image size (ok rows, pixels after EXIF orientation):"]
    for label, values in (("width", sizes[:, 0]), ("height", sizes[:, 1]), ("megapixels", sizes[:, 0] * sizes[:, 1] / 1e6)):
        order = np.argsort(values, kind="stable")
        ranked = [nearest_rank(values[order], counts[order], q) for q in (0.0, 0.1, 0.5, 0.9, 1.0)]
        fmt = "{:.2f}" if label == "megapixels" else "{:.0f}"
        cells = "  ".join(f"{name} {fmt.format(v)}" for name, v in zip(("min", "p10", "median", "p90", "max"), ranked))
        lines.append(f"    {label:<10}  {cells}")
    common = ", ".join(f"{w}x{h} ({n:,})" for (w, h), n in stats.sizes.most_common(MOST_COMMON_SIZES))
    lines.append(f"    most common: {common}")
    return lines
