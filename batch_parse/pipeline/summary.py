"""The end-of-run report: what was done, what failed and why, how fast, where the output is."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

from batch_parse.output.errors import EXIT_RETRYABLE, is_retryable


@dataclass
class JobSummary:
    output_dir: str
    model_version: str
    listed: int = 0  # images found at the source
    already_done: int = 0  # of those, committed by earlier runs
    skipped_non_image: int = 0  # objects without an image extension
    non_image_examples: list[str] = field(default_factory=list)
    skipped_system: int = 0  # files and folders the system made: ._* sidecars, .DS_Store, __MACOSX/, trash, ...
    system_examples: list[str] = field(default_factory=list)
    skipped_unreadable: int = 0  # local entries that are no readable file: symlink loops, sockets, ...
    unreadable_examples: list[str] = field(default_factory=list)  # "key: reason"
    skipped_second_path: int = 0  # symlinks to folders or photos the source holds by their real path
    second_path_examples: list[str] = field(default_factory=list)  # "link -> real key"
    rows_ok: int = 0  # face rows
    images_ok: int = 0  # images with at least one face row
    no_face: int = 0  # images decoded without a face found (one row each)
    errors: Counter = field(default_factory=Counter)  # error_code -> rows
    error_examples: dict[str, str] = field(default_factory=dict)  # error_code -> one message
    seconds: float = 0.0
    new_files: list[str] = field(default_factory=list)
    recovered_incomplete: int = 0  # unfinished files from a killed run, removed before starting
    duplicates_removed: int = 0
    incomplete_images_redone: int = 0  # images with only some faces committed: their rows removed (not done now)
    phases: dict[str, float] = field(default_factory=dict)  # seconds: recovery, listing, exclusion, labelling, check
    data_files: int = 0  # committed data files before the run
    data_files_read: int = 0  # of those, read by the recovery (the rest are covered by the index)
    leftovers_removed: int = 0  # partial manifests, partial rewrites and unfinished S3 uploads of killed runs
    retried: Counter = field(default_factory=Counter)  # error_code -> images of earlier runs' retryable errors, redone now
    not_retried: Counter = field(default_factory=Counter)  # error_code -> earlier retryable errors left (--no-retry-errors)
    migrated: int = 0  # files moved from a batch-parse <= 0.4 layout (pipeline/migrate.py)
    adopted_files: int = 0  # complete data files a killed or fenced-off run had labelled but not published
    changed_files: int = 0  # indexed data files found changed or gone since (touched, copied, truncated, deleted)
    unvouched_images: int = 0  # images whose index entries disagreed (duplicates or missing rows): re-checked
    edited_index_files: int = 0  # index files changed since written (their checksum): their data files re-read
    foreign_files: list[str] = field(default_factory=list)  # Parquet files in data/ not written by batch-parse
    correction_files: list[str] = field(default_factory=list)  # human corrections (import rows) found in data/
    not_parquet_files: list[str] = field(default_factory=list)  # *.parquet in data/ that are not Parquet at all
    adopted_rows_files: list[str] = field(default_factory=list)  # our rows whose file had lost our metadata

    def integrity_lines(self) -> list[str]:
        """What the run found changed in the output since it was last sealed, and did about it."""
        out = []
        if self.migrated:
            out.append(f"migrated: moved {self.migrated} file(s) of an older batch-parse layout into data/ and .batch-parse/")
        if self.adopted_files:
            out.append(f"recovered: published {self.adopted_files} complete data file(s) an interrupted run had not published")
        if self.changed_files:
            out.append(f"checked:  {self.changed_files} indexed data file(s) changed or gone since indexed (touched, copied, "
                       "truncated or deleted): their images re-checked")
        if self.unvouched_images:
            out.append(f"checked:  {self.unvouched_images} image(s) whose index entries disagreed (duplicates or missing rows): re-checked")
        if self.edited_index_files:
            out.append(f"checked:  {self.edited_index_files} index file(s) in .batch-parse/index changed since written "
                       "(their checksum): the data files they cover were read again, the data wins")
        if self.duplicates_removed:
            out.append(f"recovered: removed {self.duplicates_removed} duplicate (id, face_index) row(s)")
        if self.foreign_files:
            examples = ", ".join(self.foreign_files[:3])
            out.append(f"ignored:  {len(self.foreign_files)} Parquet file(s) in data/ not written by batch-parse (left as they are), "
                       f"e.g. {examples}")
        if self.correction_files:
            out.append(f"ignored:  {len(self.correction_files)} file(s) of human corrections in data/ (batch-parse import rows, "
                       f"left as they are, never counted as done), e.g. {', '.join(self.correction_files[:3])}: move them out "
                       "of data/ (readers of data/ would see those faces twice)")
        if self.not_parquet_files:
            out.append(f"ignored:  {len(self.not_parquet_files)} file(s) in data/ named .parquet that are not Parquet "
                       f"(left as they are), e.g. {', '.join(self.not_parquet_files[:3])}: rename or move them")
        if self.adopted_rows_files:
            out.append(f"recovered: {len(self.adopted_rows_files)} data file(s) had batch-parse's rows without its metadata "
                       f"(rewritten by another tool), e.g. {', '.join(self.adopted_rows_files[:3])}: checked like the run's "
                       "own, metadata restored")
        return out

    @contextmanager
    def timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - start

    @property
    def rows_written(self) -> int:
        return self.rows_ok + self.no_face + sum(self.errors.values())

    @property
    def retryable(self) -> Counter:
        """error_code -> rows this run wrote with errors that can pass (the next run retries them)."""
        return Counter({code: n for code, n in self.errors.items() if is_retryable(code)})

    @property
    def exit_code(self) -> int:
        # Bad images are data, not failures of the job: they are rows with a final error code. Rows
        # that failed for reasons that can pass (an outage, credentials, the model) are work not done.
        return EXIT_RETRYABLE if self.retryable else 0

    def lines(self) -> list[str]:
        out = [
            f"model:    {self.model_version}",
            f"output:   {self.output_dir}",
            f"source:   {self.listed} images listed, {self.already_done} already done, "
            f"{self.skipped_non_image} non-image objects skipped" + _examples(self.non_image_examples, " (e.g. ", ")"),
        ]
        if self.listed == 0:
            out.append(f"empty:    {self.empty_source_detail()}")
        if self.skipped_system:
            out.append(f"skipped:  {self.skipped_system} system file(s) and folder(s) (macOS ._* sidecars, .DS_Store, "
                       f"__MACOSX/, trash, thumbnail caches){_examples(self.system_examples, ', e.g. ')}")
        if self.skipped_unreadable:
            examples = "; ".join(self.unreadable_examples[:3])
            out.append(f"skipped:  {self.skipped_unreadable} unreadable entries (not files we can read), e.g. {examples}")
        if self.skipped_second_path:
            out.append(f"skipped:  {self.skipped_second_path} symlink(s) to a folder or photo the source holds by its real "
                       f"path (labelled once, there), e.g. {'; '.join(self.second_path_examples[:3])}")
        if self.leftovers_removed:
            out.append(f"recovered: removed {self.leftovers_removed} partial manifest(s), rewrite(s) or unfinished upload(s) of an interrupted run")
        if self.recovered_incomplete:
            # What was removed, not a promise: whether an image is labelled again depends on it being listed.
            out.append(f"recovered: removed {self.recovered_incomplete} unfinished file(s) of an interrupted run "
                       "(their images count as not done: labelled again when listed)")
        if self.incomplete_images_redone:
            out.append(f"recovered: {self.incomplete_images_redone} image(s) had only some faces committed; their rows were removed "
                       "(they count as not done: labelled again when listed)")
        if self.retried:
            out.append(f"retrying: {sum(self.retried.values())} image(s) that failed in earlier runs with errors that can pass "
                       f"({_codes(self.retried)})")
        if self.not_retried:
            out.append(f"not retried: {sum(self.not_retried.values())} image(s) of earlier runs with errors that can pass "
                       f"({_codes(self.not_retried)}): --no-retry-errors")
        out.extend(self.integrity_lines())
        out.append(self.timing_line())
        if self.rows_written == 0:
            out.append("nothing new to label: no files written")
            return out
        images = self.images_ok + self.no_face + sum(self.errors.values())
        out.append(f"images:   {images} labelled: {self.images_ok} with faces, {self.no_face} without a face, "
                   f"{sum(self.errors.values())} error")
        out.append(f"rows:     {self.rows_written} written: {self.rows_ok} faces, {self.no_face} no_face, "
                   f"{sum(self.errors.values())} error")
        for code, n in self.errors.most_common():
            example = self.error_examples.get(code, "")
            out.append(f"  {code:<14} {n:>7}   e.g. {example}")
        image_rate = images / self.seconds if self.seconds > 0 else 0.0
        face_rate = self.rows_ok / self.seconds if self.seconds > 0 else 0.0
        out.append(f"speed:    {image_rate:.1f} images/s, {face_rate:.1f} faces/s over {self.seconds:.1f} s")
        out.append(f"files:    {len(self.new_files)} new Parquet file(s)")
        for path in self.new_files[:5]:
            out.append(f"  {path}")
        if len(self.new_files) > 5:
            out.append(f"  ... and {len(self.new_files) - 5} more")
        if self.retryable:
            out.append(f"NOT DONE: {sum(self.retryable.values())} image(s) failed with errors that can pass ({_codes(self.retryable)}); "
                       f"rerun the same command to retry them (exit code {EXIT_RETRYABLE})")
        return out


    def timing_line(self) -> str:
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.phases.items())
        return f"time:     {phases} ({self.files_read_text()})"

    def files_read_text(self) -> str:
        """How many data files the recovery read, of those found: true whatever it then removed."""
        # data_files counts the files kept; the unfinished ones it removed were read too.
        found = max(self.data_files + self.recovered_incomplete, self.data_files_read)
        if found == 0:
            return "no data files yet"
        if self.data_files_read == 0:
            return f"no data file read: the index covers all {found}"
        if self.data_files_read == found:
            return f"all {found} data file(s) read"
        return f"{self.data_files_read} of {found} data files read, the index covers the rest"

    def empty_source_detail(self) -> str:
        """What a listing without images found instead (for the `source X is empty` line)."""
        skipped = [f"{n} {what}" + _examples(examples, " (e.g. ", ")")
                   for n, what, examples in ((self.skipped_non_image, "non-image object(s)", self.non_image_examples),
                                             (self.skipped_system, "system file(s)", self.system_examples),
                                             (self.skipped_unreadable, "unreadable entries", self.unreadable_examples)) if n]
        return "no images found" + (f", only {', '.join(skipped)}" if skipped else "")


def _examples(examples: list[str], before: str, after: str = "", kept: int = 3) -> str:
    return f"{before}{', '.join(examples[:kept])}{after}" if examples else ""


def _codes(counts: Counter) -> str:
    return ", ".join(f"{code} {n}" for code, n in counts.most_common())
