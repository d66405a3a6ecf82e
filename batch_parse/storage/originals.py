"""The original image of an output row, read from the source its file records: what render, export and import share.

Every output file records its source (`source`) and how that store was reached (`endpoint_url`,
`source_anonymous`; output/schema.py). Files written before source and output could be in
different stores record no endpoint of the source: their run had one endpoint for both, so the
output's own is the right guess.
"""

from __future__ import annotations

from collections.abc import Sequence

from batch_parse.storage.fetch import FetchError, fetch_members, fetch_objects, group_by_container
from batch_parse.storage.location import Location, parse_location
from batch_parse.storage.s3 import describe_error
from batch_parse.storage.shards import member_list, split_shard_key
from batch_parse.storage.sources import shard_relative


def recorded_source(metadata: dict, output: Location | None = None) -> Location:
    """Where a file's images were read from, reached as its run reached them; ValueError when not recorded."""
    source = metadata.get("source")
    if not source:
        raise ValueError("the output does not record where its images were read from")
    endpoint = metadata.get("endpoint_url") or (output.endpoint_url if output is not None and output.is_s3 else None)
    return parse_location(source, endpoint, anonymous=bool(metadata.get("source_anonymous")))


def fetch_originals(metadata: dict, keys: Sequence[str], output: Location | None = None,
                    max_bytes: int | None = None) -> list[bytes | FetchError]:
    """The encoded bytes of each row's original (by its `key`), or a FetchError saying why not.

    Never raises: a source that is not recorded, cannot be parsed or cannot be reached gives the
    same FetchError for every key, so a report still renders what it can.
    """
    try:
        source = recorded_source(metadata, output)
    except ValueError as exc:
        return [FetchError("not_found", str(exc), retry_now=False)] * len(keys)
    try:
        fmt = metadata.get("source_format") or "files"
        if fmt == "webdataset":
            return _from_shards(source, list(keys))
        if fmt == "parquet":
            from batch_parse.storage.tables import fetch_table_images

            return fetch_table_images(source, list(keys), metadata.get("image_column") or "image", metadata.get("key_column"))
        return fetch_objects(list(keys), source, max_bytes=max_bytes)
    except Exception as exc:  # no credentials, a bad endpoint: the caller shows it per image
        return [FetchError("fetch_failed", describe_error(exc, source), retry_now=False)] * len(keys)


def _from_shards(source: Location, keys: list[str]) -> list[bytes | FetchError]:
    """Images inside shards, by their `key` (shard/member): each shard's headers walked once, then ranged reads."""
    fs = source.filesystem()
    out, by_shard = group_by_container(keys, lambda key: split_shard_key(key)[0], "not a key inside a .tar shard")
    for shard, rows in by_shard.items():
        path = source.fs_path(shard_relative(source, shard))
        try:
            where = {f"{shard}/{m.name}": (m.offset, m.size) for m in member_list(fs, path)}
        except OSError as exc:
            for i in rows:
                out[i] = FetchError("not_found", f"{keys[i]}: cannot read shard {shard}: {describe_error(exc, source)}", retry_now=False)
            continue
        found = [i for i in rows if keys[i] in where]
        for i in rows:
            if keys[i] not in where:
                out[i] = FetchError("not_found", f"{keys[i]}: no such member in shard {shard} (rewritten since?)", retry_now=False)
        for i, data in zip(found, fetch_members(shard, [where[keys[i]] for i in found], source)):
            out[i] = data
    return out


def fetch_original(metadata: dict, key: str, output: Location | None = None, max_bytes: int | None = None) -> bytes | FetchError:
    """fetch_originals for one row."""
    return fetch_originals(metadata, [key], output, max_bytes)[0]
