"""One source per output: the output records the source it labels and refuses any other.

    OUTPUT/.batch-parse/source.json   {"source": "s3://bucket/prefix", "endpoint": "host:port", "anonymous": false}

Ids are a hash of the key relative to the source, so two sources share keys (`000.jpg`) and ids;
labelling folder B into folder A's output would skip B's `000.jpg` as done and keep A's labels
under its key. Refusing a second source keeps ids short and stable and each output one corpus.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlparse

import pyarrow.fs as pafs

from batch_parse.output.layout import STATE_DIR, OutputLayout
from batch_parse.storage.location import Location


def canonical_source(source: Location, fmt: str = "files") -> dict:
    """The source as compared: s3://bucket/prefix and the endpoint's host, or the resolved local folder,
    and what it holds when not one file per image (ids of shards' images are not ids of files)."""
    if source.is_s3:
        # The host names the store; the scheme does not (http and https reach the same buckets).
        endpoint = urlparse(source.endpoint_url).netloc.lower() if source.endpoint_url else "aws"
        record = {"source": source.uri, "endpoint": endpoint}
    else:
        record = {"source": os.path.realpath(source.path), "endpoint": None}
    return record if fmt == "files" else {**record, "format": fmt}


def source_record(source: Location, fmt: str = "files") -> dict:
    """The source as recorded: its identity, and how it was reached (unsigned or not; never credentials).

    How it was reached is not part of the identity: the same public bucket read with credentials
    one night and anonymously the next is the same corpus.
    """
    return {**canonical_source(source, fmt), **({"anonymous": source.anonymous} if source.is_s3 else {})}


def claim_source(fs: pafs.FileSystem, output: Location, source: Location, fmt: str = "files", *, record: bool = True) -> bool:
    """Refuse (ValueError, one line) when the output records another source; True if it records this one.

    When it records none, `source` is recorded now, or with record=False left for record_source()
    (a run records its source only once the listing found images: an empty or mistyped source must
    not claim the output). Outputs written before sources were recorded adopt the first source
    that runs on them.
    """
    path = OutputLayout(output).source_file
    where = output.join(STATE_DIR, "source.json")
    mine = canonical_source(source, fmt)
    try:
        with fs.open_input_stream(path) as f:
            recorded = json.loads(f.read())
    except ValueError:
        raise ValueError(f"{where} is not a source record (not JSON): remove it to record this run's source") from None
    except FileNotFoundError:
        if record:
            record_source(fs, output, source, fmt)
        return False
    if not (isinstance(recorded, dict) and isinstance(recorded.get("source"), str) and recorded["source"]
            and isinstance(recorded.get("endpoint"), (str, type(None)))):
        shown = json.dumps(recorded)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ValueError(f"{where} is not a source record (it holds {shown}, not {{\"source\": ..., \"endpoint\": ...}}): "
                         "remove it to record this run's source")
    theirs = {"source": recorded["source"], "endpoint": recorded.get("endpoint"),
              **({"format": recorded["format"]} if recorded.get("format", "files") != "files" else {})}
    if theirs != mine:
        raise ValueError(
            f"output {output.uri} already holds labels of source {_describe(theirs)}; "
            f"refusing source {_describe(mine)}: use another output"
        )
    return True


def file_source(meta: dict) -> dict | None:
    """The source a data file's metadata names, as the output records sources; None where the file
    cannot say (written before files carried `source_record`, with a relative folder or none)."""
    record = meta.get("source_record")
    if isinstance(record, dict) and isinstance(record.get("source"), str):
        return {"source": record["source"], "endpoint": record.get("endpoint"),
                **({"format": record["format"]} if record.get("format", "files") != "files" else {})}
    raw = meta.get("source")
    if not isinstance(raw, str) or not raw:
        return None
    if raw.startswith("s3://"):
        endpoint = meta.get("endpoint_url")
        return {"source": raw.rstrip("/"), "endpoint": urlparse(endpoint).netloc.lower() if endpoint else "aws"}
    return {"source": os.path.realpath(raw), "endpoint": None} if os.path.isabs(raw) else None


def data_file_check(output: Location, source: Location, model_version: str, sha256: str, fmt: str = "files"):
    """A check of each data file's own metadata against this run's source and weights (commit.recover
    calls it on every file no index covers, before any of its rows counts as done): a `data/` copied
    on its own, without `.batch-parse/`, must not lend another corpus's labels to this source's keys.
    The check raises ValueError naming the file and what to do."""
    mine = canonical_source(source, fmt)

    def check(name: str, meta: dict) -> None:
        where = output.join("data", name)
        theirs = file_source(meta)
        if theirs is not None and _identity(theirs) != _identity(mine):
            raise ValueError(f"{where} holds labels of source {_describe(theirs)} (its metadata); refusing source "
                             f"{_describe(mine)}: use another output, or run it with the source it was labelled from")
        sha = meta.get("weights_sha256")
        if isinstance(sha, str) and sha != sha256:
            raise ValueError(f"{where} holds labels of {meta.get('model')}@{sha[:8]} (its metadata); refusing {model_version}: "
                             "use another output for these weights, or the model that wrote it (--model)")

    return check


def _identity(record: dict) -> tuple:
    # No format: one file per image (every file written before shard sources existed).
    return record["source"].rstrip("/"), record.get("endpoint"), record.get("format", "files")


def record_source(fs: pafs.FileSystem, output: Location, source: Location, fmt: str = "files") -> None:
    """Write the output's source record (the caller holds the lease and found no record)."""
    path = OutputLayout(output).source_file
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(source_record(source, fmt)).encode())


def _describe(record: dict) -> str:
    where = record["source"] if not record.get("endpoint") else f"{record['source']} (endpoint {record['endpoint']})"
    return where if not record.get("format") else f"{where} as {record['format']}"
