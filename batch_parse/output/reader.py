"""Finds and reads a job's output Parquet files (local folder or S3), only the columns asked for.

The output is `DST/data/*.parquet` (output/layout.py; `DST/<model version folder>/data` before
0.5), but nothing here relies on folder names: every `*.parquet` under DST counts (names starting
with '_' or '.' are skipped: control state, Ray's temporary and hidden files), files without
batch-parse metadata are set aside as foreign, and rows say their own model_version.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_parse.output.quality import PARSE_SCORE, parse_scores
from batch_parse.output.schema import DERIVED_COLUMNS, LABEL_SOURCE_HUMAN, lost_its_metadata, model_version_of, read_metadata
from batch_parse.storage.location import Location, as_location
from batch_parse.storage.s3 import StorageError, describe_error

BATCH_ROWS = 65_536
# Footers are one small request each; on S3 latency, not bandwidth, is what threads hide.
FOOTER_THREADS = 8


@dataclass(frozen=True)
class OutputFile:
    path: str  # as the filesystem spells it ('bucket/key' on S3)
    metadata: dict  # schema.read_metadata of the file
    num_rows: int
    schema: pa.Schema | None = None  # an adopted file's: that of our files it was adopted by (its own may differ)
    adopted: bool = False  # our rows without our metadata (rewritten by pandas & co): read cast to `schema`


@dataclass
class Output:
    """The batch-parse files under one output location."""

    location: Location
    filesystem: pafs.FileSystem
    files: list[OutputFile]
    foreign: list[str]  # Parquet files without batch-parse metadata, left out of `files`
    corrections: list[str] = field(default_factory=list)  # human corrections found among model rows, left out

    def relative(self, path: str) -> str:
        """A file's path under the output location, for messages."""
        root = self.location.fs_path()
        return path[len(root) :].lstrip("/") if path.startswith(root) else path

    def batches(self, columns: Sequence[str], files: Sequence[OutputFile] | None = None,
                optional: Sequence[str] = ()) -> Iterator[tuple[OutputFile, pa.RecordBatch]]:
        """Every row of the files (default: all), `columns` only, a bounded number of rows at a time.

        optional: columns some files may lack (pixels_skin in 9-class files): read where present,
        all null where not, so every batch has the same columns."""
        for file in self.files if files is None else files:
            try:
                with self.filesystem.open_input_file(file.path) as stream:
                    parquet = pq.ParquetFile(stream)
                    names = parquet.schema_arrow.names
                    required = source_columns(names, [c for c in columns if c not in optional or c in names])
                    _require_columns(parquet.schema_arrow, required, self.relative(file.path))
                    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=required):
                        if file.adopted:
                            batch = _cast_like(batch, file.schema)
                        yield file, _with_nulls(derive_columns(batch, columns), columns)
            except OSError as exc:
                raise StorageError(f"cannot read {self.relative(file.path)}: {describe_error(exc, self.location)}") from exc

    def read_rows(self, file: OutputFile, columns: Sequence[str], ids: Sequence[int]) -> pa.Table:
        """The rows of one file whose id is in `ids`; Parquet statistics skip row groups without them."""
        try:
            dataset = ds.dataset(file.path, filesystem=self.filesystem, format="parquet")
            required = source_columns(dataset.schema.names, columns)
            _require_columns(dataset.schema, required, self.relative(file.path))
            table = dataset.to_table(columns=required, filter=pc.field("id").isin(pa.array(ids, pa.int64())))
            batch = table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)
            batch = derive_columns(_cast_like(batch, file.schema) if file.adopted else batch, columns)
            return pa.Table.from_batches([batch.select(list(columns))])
        except OSError as exc:
            raise StorageError(f"cannot read {self.relative(file.path)}: {describe_error(exc, self.location)}") from exc


def open_output(dst: str | Location) -> Output:
    """List and open the output at `dst`; ValueError if nothing is there, StorageError if it cannot be read."""
    location = as_location(dst)
    filesystem = location.filesystem()
    root = location.fs_path()
    try:
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.File:
            paths = [root] if root.endswith(".parquet") else []
        else:
            entries = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
            paths = sorted(e.path for e in entries if e.type == pafs.FileType.File and _is_data_file(e.path, root))
            if not entries and info.type == pafs.FileType.NotFound:
                raise ValueError(f"output location not found: {location.uri}")
    except OSError as exc:
        raise StorageError(describe_error(exc, location)) from exc
    if not paths:
        raise ValueError(f"no Parquet files under {location.uri}: is this a batch-parse output location?")

    def footer(path: str) -> OutputFile | tuple[str, pa.Schema | None, int]:
        try:
            with filesystem.open_input_file(path) as stream:
                parquet = pq.ParquetFile(stream)
                schema, num_rows = parquet.schema_arrow, parquet.metadata.num_rows
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {describe_error(exc, location)}") from exc
        except pa.ArrowInvalid:
            return path, None, 0  # not Parquet despite the name
        try:
            return OutputFile(path, read_metadata(schema), num_rows, schema)
        except ValueError:
            return path, schema, num_rows

    with ThreadPoolExecutor(max_workers=min(FOOTER_THREADS, len(paths))) as pool:
        found = list(pool.map(footer, paths))
    ours = [f for f in found if isinstance(f, OutputFile)]
    output = Output(location=location, filesystem=filesystem, files=ours, foreign=[])
    by_version = {model_version_of(f.metadata): f for f in ours}
    for item in found:
        if not isinstance(item, OutputFile):
            adopted = _adopted(output, *item, by_version)
            (output.files.append(adopted) if adopted is not None else output.foreign.append(item[0]))
    output.files.sort(key=lambda f: f.path)
    if not output.files:
        lost = [item[0] for item in found if item[1] is not None and lost_its_metadata(item[1])]
        if lost:
            raise ValueError(f"{output.relative(lost[0])} holds batch-parse rows without batch-parse's metadata (rewritten by "
                             "pandas or another tool?): run the same `batch-parse run` once to give it back")
        raise ValueError(f"no batch-parse output under {location.uri}: {len(paths)} Parquet file(s), none written by batch-parse")
    human = [f for f in output.files if f.metadata.get("label_source") == LABEL_SOURCE_HUMAN]
    if human and len(human) < len(output.files):
        # Corrections put beside the model's rows (by hand: `import` refuses it) would show every
        # reviewed face twice: the model's rows are the output, the corrections are named apart.
        output.files = [f for f in output.files if f.metadata.get("label_source") != LABEL_SOURCE_HUMAN]
        output.corrections = [f.path for f in human]
    return output


def _adopted(output: Output, path: str, schema: pa.Schema | None, num_rows: int,
             by_version: dict[str, OutputFile]) -> OutputFile | None:
    """A file of our rows that lost our metadata (schema.lost_its_metadata), read as one of ours with
    the metadata and schema of our files of its rows' model version; None if it is not that.

    Between a user's pandas rewrite and the next run (which gives the file its metadata back,
    pipeline/commit.py), readers and exports would otherwise leave all its rows out."""
    if schema is None or not lost_its_metadata(schema):
        return None
    try:
        with output.filesystem.open_input_file(path) as stream:
            versions = pc.unique(pq.read_table(stream, columns=["model_version"])["model_version"]).to_pylist()
    except (OSError, pa.ArrowInvalid):
        return None
    template = by_version.get(versions[0]) if len(versions) == 1 else None
    if template is None:
        return None  # rows of no model the output's own files name, or of several: not ours to vouch for
    return OutputFile(path, template.metadata, num_rows, template.schema, adopted=True)


def source_columns(names: Sequence[str], columns: Sequence[str]) -> list[str]:
    """The columns to read from a file with columns `names` to give `columns`: a derived column the
    file lacks (parse_score before 0.6) is replaced by the columns it is computed from."""
    wanted: list[str] = []
    for column in columns:
        wanted += DERIVED_COLUMNS[column] if column in DERIVED_COLUMNS and column not in names else [column]
    return list(dict.fromkeys(wanted))


def derive_columns(batch: pa.RecordBatch, columns: Sequence[str]) -> pa.RecordBatch:
    """The batch (read with source_columns) with the derived `columns` it lacks appended, computed.

    Old outputs read as new ones: the computed parse_score is the value the job now stores
    (output/quality.py, rounded to float32 as the column is), so filters and sorting agree."""
    for column in columns:
        if column == PARSE_SCORE and column not in batch.schema.names:
            confidences = np.column_stack([pc.fill_null(pc.cast(batch.column(c), pa.float64()), float("nan")).to_numpy(zero_copy_only=False)
                                           for c in DERIVED_COLUMNS[column]])  # fmt: skip
            score = parse_scores(confidences).astype(np.float32)
            batch = batch.append_column(column, pa.array(score, pa.float32(), mask=np.isnan(score)))
    return batch


def _cast_like(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """An adopted file's batch with our column types (pandas writes e.g. timestamps in ns, lists of doubles)."""
    arrays = [batch.column(i).cast(schema.field(name).type) if name in schema.names else batch.column(i)
              for i, name in enumerate(batch.schema.names)]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _with_nulls(batch: pa.RecordBatch, columns: Sequence[str]) -> pa.RecordBatch:
    """The batch with `columns` in that order, the ones it lacks as int64 nulls (pixel counts)."""
    if list(batch.schema.names) == list(columns):
        return batch
    arrays = [batch.column(c) if c in batch.schema.names else pa.nulls(batch.num_rows, pa.int64()) for c in columns]
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


def _is_data_file(path: str, root: str) -> bool:
    parts = path[len(root) :].strip("/").split("/")
    return parts[-1].endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts)


def _require_columns(schema: pa.Schema, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ValueError(f"{name}: column(s) {', '.join(missing)} missing: written by an incompatible batch-parse version?")
