"""`batch-parse progress OUTPUT`: how far the latest run on an output got, read-only and without Ray.

    set out   the latest run's manifest (.batch-parse/manifests/STAMP.parquet): the images it listed
              and had not done yet
    done      of those, images complete in data/ (the index, plus the data files no index covers yet:
              commit.read_committed), less those whose row is a retryable error
    retryable of those, images whose row is a retryable error (the next run redoes them)
    staged    of those, images complete only in files a run wrote into staging/ and did not publish
    pending   the rest: not written yet (the run is on them, or was stopped before them)
    lease     whether a run holds the output now (its holder, when the lease expires)

Nothing is written, deleted or repaired: a run's own checks (commit.recover) decide what stays.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_parse.output.layout import OutputLayout
from batch_parse.pipeline import commit
from batch_parse.storage import id_ranges
from batch_parse.output.lease import read_lease
from batch_parse.storage.location import Location, as_location
from batch_parse.storage.manifest import PARTIAL_PREFIX, PARTS_PREFIX


@dataclass
class Progress:
    output: str
    data: str
    manifest: str | None = None  # the latest run's manifest (None: no run set out to do anything yet)
    manifest_time: str | None = None  # when that run listed (the manifest's UTC stamp)
    set_out: int = 0
    done: int = 0
    retryable: int = 0
    staged: int = 0
    pending: int = 0
    retryable_rows: dict[str, int] = field(default_factory=dict)  # error_code -> rows, whole output
    images: int = 0  # complete images in data/, whole output
    data_files: int = 0
    unindexed_files: int = 0  # data files no index covers yet (a running or killed run's)
    unfinished_files: int = 0  # of those, no footer (a kill mid-write)
    staged_files: int = 0  # complete files in staging/, not published
    staged_unfinished: int = 0
    staged_rows: int = 0
    lease: dict | None = None  # {"holder", "expires_at", "live"}; None: no run holds the output

    def lines(self) -> list[str]:
        out = [f"output:    {self.output} (dataset: {self.data})"]
        if self.manifest is None:
            out.append("latest:    no run has set out to label anything here yet")
        else:
            pct = f" ({100 * self.done / self.set_out:.1f}%)" if self.set_out else ""
            out += [f"latest:    run listed at {self.manifest_time}: {self.set_out} image(s) to do",
                    f"manifest:  {self.manifest}",
                    f"done:      {self.done} of {self.set_out}{pct}",
                    f"pending:   {self.pending}"]
            if self.staged:
                out.append(f"staged:    {self.staged} (written, not yet published into data/)")
            out.append(f"retryable: {self.retryable}" + (" (errors that can pass: the next run redoes them)" if self.retryable else ""))
        if self.retryable_rows:
            codes = ", ".join(f"{code} {n}" for code, n in sorted(self.retryable_rows.items()))
            out.append(f"errors:    {sum(self.retryable_rows.values())} retryable error row(s) in the output: {codes}")
        out.append(f"images:    {self.images} complete in {self.data_files} data file(s)"
                   + (f", {self.unindexed_files} not yet checked by a run" if self.unindexed_files else "")
                   + (f" ({self.unfinished_files} unfinished)" if self.unfinished_files else ""))
        if self.staged_files or self.staged_unfinished:
            out.append(f"staging:   {self.staged_files} file(s), {self.staged_rows} row(s) not published"
                       + (f", {self.staged_unfinished} being written or unfinished" if self.staged_unfinished else ""))
        if self.lease is None:
            out.append("lease:     none (no run is writing to this output)")
        elif self.lease.get("live"):
            out.append(f"lease:     held by {self.lease.get('holder', 'an unknown run')}; expires {self.lease.get('expires_at', '?')} unless renewed")
        else:
            out.append(f"lease:     left by {self.lease.get('holder', 'an unknown run')}, expired or its process gone "
                       f"({self.lease.get('expires_at', '?')}): the next run takes it over")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def progress(output_uri: str | Location) -> Progress:
    """The latest run's progress on `output_uri` (local or s3://), read-only."""
    output = as_location(output_uri)
    fs = output.filesystem()
    layout = OutputLayout(output)
    if not output.is_s3 and not os.path.isdir(output.path):
        raise ValueError(f"output location not found: {output.uri}")
    if not output.is_s3 and not (os.path.isdir(layout.data_dir) or os.path.isdir(layout.state_dir)):
        raise ValueError(f"{output.uri} is no batch-parse output (no data/ or .batch-parse/ in it)")
    view = commit.read_committed(fs, layout.data_dir, layout.index_dir, layout.staging_root)
    lease = read_lease(output)
    result = Progress(
        output=output.uri, data=layout.data_uri, retryable_rows=dict(view.retryable), data_files=view.data_files,
        unindexed_files=view.uncovered_files, unfinished_files=view.unfinished_files, staged_files=view.staged_files,
        staged_unfinished=view.staged_unfinished, staged_rows=view.staged_rows,
        lease=None if lease is None else {k: lease.get(k) for k in ("holder", "expires_at", "live")},
    )
    manifest = latest_manifest(fs, layout.manifests_dir)
    wanted = np.empty(0, np.int64)
    if manifest is not None:
        with fs.open_input_file(manifest) as f:
            wanted = np.unique(pq.read_table(f, columns=["id"])["id"].to_numpy())
        name = manifest.rsplit("/", 1)[-1]
        result.manifest, result.manifest_time = output.join(".batch-parse", "manifests", name), _stamp_time(name)
        result.set_out = len(wanted)
    counts = Counter()
    # One id range at a time, as the run reads the index: memory holds one range of done ids.
    for lo, hi in id_ranges.ranges(id_ranges.range_count(max(view.size, len(wanted)))):
        done = np.unique(view.ids_in_range(lo, hi))
        result.images += len(done)
        mine = wanted[(wanted >= lo) & (wanted < hi)]
        if not len(mine):
            continue
        committed = np.isin(mine, done)
        retry = np.isin(mine, view.retryable_ids)
        staged = np.isin(mine, view.staged_done) & ~committed
        counts["done"] += int((committed & ~retry).sum())
        counts["retryable"] += int((committed & retry).sum())
        counts["staged"] += int(staged.sum())
        counts["pending"] += int((~committed & ~staged).sum())
    result.done, result.retryable, result.staged, result.pending = (counts[k] for k in ("done", "retryable", "staged", "pending"))
    return result


def latest_manifest(fs: pafs.FileSystem, manifests_dir: str) -> str | None:
    """The newest complete manifest (names are UTC stamps, so the last by name); None if there is none."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(manifests_dir, allow_not_found=True))
    except FileNotFoundError:
        return None
    names = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                   and not i.base_name.startswith((PARTIAL_PREFIX, PARTS_PREFIX)))
    return names[-1] if names else None


def _stamp_time(name: str) -> str:
    try:
        when = datetime.strptime(name.split(".", 1)[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return name
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")
