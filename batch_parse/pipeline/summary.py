"""The end-of-run report: what was done, what failed and why, how fast, where the output is."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class JobSummary:
    output_dir: str
    model_version: str
    listed: int = 0  # images found at the source
    already_done: int = 0  # of those, committed by earlier runs
    skipped_non_image: int = 0  # objects without an image extension
    skipped_unreadable: int = 0  # local entries that are no readable file: symlink loops, sockets, ...
    unreadable_examples: list[str] = field(default_factory=list)  # "key: reason"
    rows_ok: int = 0
    errors: Counter = field(default_factory=Counter)  # error_code -> rows
    error_examples: dict[str, str] = field(default_factory=dict)  # error_code -> one message
    seconds: float = 0.0
    new_files: list[str] = field(default_factory=list)
    recovered_incomplete: int = 0  # unfinished files from a killed run, removed before starting
    duplicates_removed: int = 0

    @property
    def rows_written(self) -> int:
        return self.rows_ok + sum(self.errors.values())

    @property
    def exit_code(self) -> int:
        # Bad images are data, not failures of the job: they are reported as rows.
        return 0

    def lines(self) -> list[str]:
        rate = self.rows_written / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"model:    {self.model_version}",
            f"output:   {self.output_dir}",
            f"source:   {self.listed} images listed, {self.already_done} already done, "
            f"{self.skipped_non_image} non-image objects skipped",
        ]
        if self.skipped_unreadable:
            examples = "; ".join(self.unreadable_examples[:3])
            out.append(f"skipped:  {self.skipped_unreadable} unreadable entries (not files we can read), e.g. {examples}")
        if self.recovered_incomplete:
            out.append(f"recovered: removed {self.recovered_incomplete} unfinished file(s) of an interrupted run; their rows were redone")
        if self.rows_written == 0:
            out.append("nothing new to label: no files written")
            return out
        out.append(f"rows:     {self.rows_written} written: {self.rows_ok} ok, {sum(self.errors.values())} error")
        for code, n in self.errors.most_common():
            example = self.error_examples.get(code, "")
            out.append(f"  {code:<14} {n:>7}   e.g. {example}")
        out.append(f"speed:    {rate:.1f} images/s over {self.seconds:.1f} s")
        out.append(f"files:    {len(self.new_files)} new Parquet file(s)")
        for path in self.new_files[:5]:
            out.append(f"  {path}")
        if len(self.new_files) > 5:
            out.append(f"  ... and {len(self.new_files) - 5} more")
        return out
