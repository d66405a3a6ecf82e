"""What a run will do, worked out before anything is labelled; and `run --dry-run`, which stops there.

    check_locations   the options, the source and the output checked (no torch, no Ray): the CLI
                      calls it before it imports the job, so a bad location fails in one line at once
    list_todo         the source listed into a manifest, leaving out what is committed (job.py's
                      listing and exclusion; the dry run's too)
    dry_run           listed / already done / to do, without a lease, Ray or a byte written to the
                      output: the committed set is read read-only (commit.read_committed), and the
                      manifest is written into a temporary local folder and thrown away
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from batch_parse.output.layout import OutputLayout
from batch_parse.pipeline import commit
from batch_parse.pipeline.options import JobOptions
from batch_parse.storage.sources import iter_units, resolve_format
from batch_parse.storage.location import Location
from batch_parse.storage.manifest import DoneIds, ManifestStats, write_manifest
from batch_parse.storage.s3 import check_access
from batch_parse.output.source_identity import claim_source, data_file_check


def check_locations(options: JobOptions) -> tuple[Location, Location]:
    """(source, output) of valid options; ValueError (one line) naming what is wrong, StorageError for S3."""
    problems = options.validate()
    if problems:
        raise ValueError("; ".join(problems))
    source, output = options.source_location(), options.output_location()
    for location in (source, output):
        if location.is_s3:
            check_access(location)
    if not source.is_s3 and not os.path.isdir(source.path):
        if os.path.exists(source.path):
            raise ValueError(f"source {source.path} is a file, not a folder: give the folder that holds the images"
                             + ("" if options.object_list else " (a list of keys goes in --object-list, with the folder as SRC)"))
        raise ValueError(f"source folder not found: {source.path}")
    if not output.is_s3 and os.path.exists(output.path) and not os.path.isdir(output.path):
        raise ValueError(f"output {output.path} is a file, not a folder")
    return source, output


def resolve_source_format(options: JobOptions, source: Location) -> str:
    """Settle `options.source_format` (auto: by the extensions the source lists) once for the run; returns it."""
    options.source_format = resolve_format(source, options.source_format, options.object_list)
    return options.source_format


def list_todo(options: JobOptions, source: Location, fs: pafs.FileSystem, manifest_path: str, committed: DoneIds) -> ManifestStats:
    """List the source into the manifest at `manifest_path`, leaving out the `committed` images.

    Sources of shards or tables list their images from the shards' headers or the tables' footers
    (storage/sources.py), one shard or table at a time: the manifest's two passes bound memory as
    for a listing of files."""
    listing = iter_units(source, resolve_source_format(options, source), options.object_list, options.image_column,
                         options.key_column)
    return write_manifest(listing, manifest_path, fs, committed=committed)


@dataclass
class _Done:
    """The images a run would leave out: committed in data/ or staged (a killed run's, published
    first), less those with retryable error rows when the run retries them."""

    view: commit.CommittedView
    retry_errors: bool

    @property
    def size(self) -> int:
        return self.view.size + len(self.view.staged_done)

    def ids_in_range(self, lo: int, hi: int) -> np.ndarray:
        staged = self.view.staged_done[(self.view.staged_done >= lo) & (self.view.staged_done < hi)]
        ids = np.sort(np.concatenate([self.view.ids_in_range(lo, hi), staged]))
        if self.retry_errors and len(self.view.retryable_ids):
            ids = ids[~np.isin(ids, self.view.retryable_ids)]
        return ids


@dataclass
class DryRun:
    source: str
    output: str
    stats: ManifestStats
    retry_errors: bool
    retryable: int = 0  # images with retryable error rows: in "to do" when the run retries them
    uncovered_files: int = 0  # data files the run's checks would read (not indexed)
    unfinished_files: int = 0  # of those, unfinished (deleted by the run; their rows were never committed)
    staged_files: int = 0  # a killed run's staged files, published first by the run
    legacy_folders: list[str] = field(default_factory=list)  # an earlier layout the run would move first
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        s = self.stats
        out = [f"dry run:  nothing labelled, nothing written to {self.output}",
               f"source:   {self.source}",
               f"listed:   {s.listed} image(s)",
               f"done:     {s.excluded} already in the output",
               f"to do:    {s.written} image(s)"
               + (f", {self.retryable} of them retried (retryable error rows)" if self.retry_errors and self.retryable else "")]
        if not self.retry_errors and self.retryable:
            out.append(f"kept:     {self.retryable} image(s) with retryable error rows (--no-retry-errors)")
        skipped = [f"{s.skipped_non_image} non-image" if s.skipped_non_image else "",
                   f"{s.skipped_system} system" if s.skipped_system else "",
                   f"{s.skipped_unreadable} unreadable" if s.skipped_unreadable else "",
                   f"{s.skipped_second_path} second path(s) by symlink" if s.skipped_second_path else ""]
        if any(skipped):
            total = s.skipped_non_image + s.skipped_system + s.skipped_unreadable + s.skipped_second_path
            examples = (s.non_image_examples + s.system_examples + s.unreadable_examples + s.second_path_examples)[:3]
            out.append(f"skipped:  {total} ({', '.join(k for k in skipped if k)}), e.g. {', '.join(examples)}")
        if self.uncovered_files:
            out.append(f"checks:   {self.uncovered_files} data file(s) not yet indexed; the run checks them first"
                       + (f" ({self.unfinished_files} unfinished, to be removed)" if self.unfinished_files else ""))
        if self.staged_files:
            out.append(f"staged:   {self.staged_files} file(s) a run wrote but did not publish; the run publishes them first")
        if self.legacy_folders:
            out.append(f"migrate:  {len(self.legacy_folders)} folder(s) of the 0.4 layout, moved into data/ first "
                       "(their images are not counted as done here)")
        return out + [f"note:     {n}" for n in self.notes]

    def to_dict(self) -> dict:
        s = self.stats
        return {"source": self.source, "output": self.output, "listed": s.listed, "done": s.excluded, "to_do": s.written,
                "retryable": self.retryable, "retry_errors": self.retry_errors,
                "skipped": {"non_image": s.skipped_non_image, "system": s.skipped_system, "unreadable": s.skipped_unreadable,
                            "second_path": s.skipped_second_path},
                "uncovered_files": self.uncovered_files, "unfinished_files": self.unfinished_files,
                "staged_files": self.staged_files, "legacy_folders": self.legacy_folders, "notes": self.notes}


def dry_run(options: JobOptions) -> DryRun:
    """What `run` would do with `options`, with nothing labelled and nothing written to the output.

    Refuses (ValueError, one line) where the run would: another source or other weights recorded
    in the output. The counts are the run's own listing and exclusion over the committed set as it
    is now; the run's checks (commit.recover) may still find duplicates or unfinished images to redo.
    """
    source, output = check_locations(options)
    fs = output.filesystem()
    layout = OutputLayout(output)
    claim_source(fs, output, source, resolve_source_format(options, source), record=False)  # reads only: raises on another source
    legacy, check = _check_model(fs, output, source, layout, options)
    view = commit.read_committed(fs, layout.data_dir, layout.index_dir, layout.staging_root, check=check)
    done = _Done(view, options.retry_errors)
    with tempfile.TemporaryDirectory(prefix="batch-parse-dry-run-") as scratch:
        stats = list_todo(options, source, pafs.LocalFileSystem(), f"{scratch}/manifest.parquet", done)
    result = DryRun(source.uri, output.uri, stats, options.retry_errors, retryable=len(view.retryable_ids),
                    uncovered_files=view.uncovered_files, unfinished_files=view.unfinished_files,
                    staged_files=view.staged_files, legacy_folders=[f.rsplit("/", 1)[-1] for f in legacy])
    if stats.listed == 0:
        result.notes.append(f"source {source.uri} is empty: a run would label nothing"
                            + ("" if fs.get_file_info(layout.source_file).type == pafs.FileType.File
                               else f", and would not claim {output.uri} for it"))
    return result


def _check_model(fs: pafs.FileSystem, output: Location, source: Location, layout: OutputLayout,
                 options: JobOptions) -> tuple[list[str], commit.FileCheck]:
    """Refuse other weights as the run would (model.json); the legacy folders of these weights, and
    the run's check of each uncovered data file's own source and weights."""
    # model.weights imports torch: only once the arguments are checked
    from batch_parse.model.weights import file_sha256, resolve
    from batch_parse.pipeline.migrate import legacy_folders
    from batch_parse.output.model_identity import claim_model

    name, path = resolve(options.model)
    sha = file_sha256(path)
    claim_model(fs, output, f"{name}@{sha[:8]}", sha, record=False)  # reads only: raises on other weights
    check = data_file_check(output, source, f"{name}@{sha[:8]}", sha, options.source_format)
    return legacy_folders(fs, layout, sha), check
