"""What a source holds: one object per image (`files`), WebDataset tar shards, or Parquet image tables.

The formats are pipeline/options.py's SOURCE_FORMATS. `--source-format auto` (the default) looks at the first objects the source lists: a source whose
objects are mostly `.tar` is read as WebDataset shards, mostly `.parquet` as Parquet image
tables, anything else as files. The format is resolved once per run and recorded in every output
file's metadata (`source_format`), which is how render, export and import find an original.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

from batch_parse.storage.listing import ListingStats, is_image_key, iter_objects, planned_in_order
from batch_parse.storage.location import Location
from batch_parse.storage.objects import ObjectInfo
from batch_parse.storage.shards import ShardStats, is_shard_key, plan_shard
from batch_parse.storage.tables import is_parquet_key

_PROBE = 200  # objects looked at by `auto`


def resolve_format(source: Location, fmt: str, object_list: str | None = None) -> str:
    """The source's format: `fmt` itself unless it is `auto`, then guessed from the first listed objects."""
    if fmt != "auto":
        return fmt
    listing = iter_objects(source, object_list=object_list, wanted=lambda key: True)
    counts = Counter()
    for info in itertools.islice(listing, _PROBE):
        key = info.key
        counts["webdataset" if is_shard_key(key) else "parquet" if is_parquet_key(key) else "files" if is_image_key(key) else "other"] += 1
    counts.pop("other", None)
    return counts.most_common(1)[0][0] if counts else "files"


class ShardSamples:
    """The images of a source of WebDataset shards, planned from their headers; `stats` as a listing's.

    Shards are planned listing.PLAN_THREADS at a time and their samples yielded as each shard is done:
    the driver holds at most a few shards' sample lists, never the corpus's keys.
    """

    def __init__(self, source: Location, object_list: str | None = None):
        self.source = source
        self.listing = iter_objects(source, fan_out=True, object_list=object_list, wanted=is_shard_key)
        self.stats: ListingStats = self.listing.stats
        self._samples = self._plan()

    def __iter__(self) -> Iterator[ObjectInfo]:
        return self

    def __next__(self) -> ObjectInfo:
        return next(self._samples)

    def _plan(self) -> Iterator[ObjectInfo]:
        fs = self.source.filesystem()

        def plan(shard: ObjectInfo) -> tuple[list[ObjectInfo], ShardStats]:
            path = self.source.fs_path(shard_relative(self.source, shard.key))
            stats = ShardStats()  # one per shard: the threads share nothing
            return list(plan_shard(fs, path, shard.key, stats)), stats

        for samples, stats in planned_in_order(self.listing, plan):
            self.stats.images += stats.samples - 1  # the listing counted the shard itself as one
            # Samples without an image (captions only) are skipped like non-image objects, with examples.
            self.stats.skipped_non_image += stats.samples_without_image
            self.stats.non_image_examples += stats.examples[: max(0, 5 - len(self.stats.non_image_examples))]
            yield from samples


def shard_relative(source: Location, shard_key: str) -> str:
    """A shard's path under the source: S3 keys are full object keys, local ones already relative."""
    if source.is_s3 and source.list_prefix and shard_key.startswith(source.list_prefix):
        return shard_key[len(source.list_prefix) :]
    return shard_key


def iter_units(source: Location, fmt: str, object_list: str | None = None, image_column: str = "image",
               key_column: str | None = None):
    """The images of the source in format `fmt` (resolved), streamed, with a listing's `stats`."""
    if fmt == "webdataset":
        return ShardSamples(source, object_list)
    if fmt == "parquet":
        from batch_parse.storage.tables import TableImages  # here: tables.py imports this module's shard_relative

        return TableImages(source, object_list, image_column, key_column)
    return iter_objects(source, fan_out=True, object_list=object_list)
