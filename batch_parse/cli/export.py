"""`batch-parse export`: a job's output as COCO, CVAT, Label Studio, Hugging Face or FiftyOne files."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from batch_parse.cli.redact import echo
from batch_parse.export import FORMATS

PROGRESS_SECONDS = 2.0


class _Progress:
    """One stderr line every few seconds (redrawn in place on a terminal): rows read, images written, rate."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.tty = stream, stream.isatty()
        self.start = self.last = time.monotonic()
        self.shown = False

    def __call__(self, rows: int, total: int, images: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS and rows < total:
            return
        if not self.shown and rows >= total and now - self.start < PROGRESS_SECONDS:
            return  # a short export needs no progress line
        self.last, self.shown = now, True
        rate = images / max(now - self.start, 1e-9)
        line = f"exporting: {rows:,}/{total:,} rows read ({100 * rows / max(total, 1):.0f}%), {images:,} images written, {rate:.1f} images/s"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")


@click.command()
@click.argument("dst")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--to", "fmt", type=click.Choice(FORMATS), required=True, help="Format to write.")
@click.option("--where", help="Keep only rows matching COLUMN OP VALUE clauses joined by 'and', "
                              "e.g. \"face_score >= 0.99 and mouth_confidence < 0.8\" (OP: == != < <= > >=).")
@click.option("--limit", type=click.IntRange(min=1), help="Export at most N images.")
@click.option("--copy-images", is_flag=True, help="Copy the originals into OUT/images (hf: into the Parquet) "
                                                  "instead of referencing them by key.")
@click.option("--endpoint-url", help="S3-compatible endpoint.  [default: AWS]")
def export(dst: str, out: Path, fmt: str, where: str | None, limit: int | None, copy_images: bool, endpoint_url: str | None) -> None:
    """Export labels for COCO, CVAT, Label Studio, HF or FiftyOne.

    Reads the job's output at DST and writes the new folder OUT, which the tool imports as is
    (README: "Review and correct"). Error rows are not exported.

    \b
    coco         annotations.json: an RLE mask per part class per face
    cvat         segmentation-mask-1.1.zip: CVAT's "Segmentation mask 1.1"
    labelstudio  tasks.json (brush pre-annotations) + labeling_config.xml
    hf           data/*.parquet for datasets.load_dataset("parquet", ...)
    fiftyone     a folder for fo.Dataset.from_dir(OUT, fo.types.FiftyOneDataset)
    """
    from batch_parse.export import export_output
    from batch_parse.storage.location import parse_location

    progress = _Progress()
    try:
        result = export_output(parse_location(dst, endpoint_url), out, fmt, where=where, limit=limit, copy_images=copy_images,
                               progress=progress)  # fmt: skip
    finally:
        progress.close()
    for line in result.lines():
        echo(line)


COMMANDS = [export]
