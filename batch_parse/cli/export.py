"""`batch-parse export`: a job's output as COCO, CVAT, Label Studio, Hugging Face or FiftyOne files."""

from __future__ import annotations

from pathlib import Path

import click

from batch_parse.cli.redact import echo
from batch_parse.export import FORMATS

QUIET_SECONDS = 2.0  # an export shorter than this shows no progress at all


class _Progress:
    """The export's progress (report/meter.py): rows read of the output's total, images written."""

    def __init__(self, stream=None):
        self.stream, self.meter = stream, None

    def __call__(self, rows: int, total: int, images: int) -> None:
        if self.meter is None:
            from batch_parse.report.meter import Meter

            self.meter = Meter(total, "exporting: read", unit="rows", stream=self.stream, quiet_for=QUIET_SECONDS)
        self.meter.set(rows, f"{images:,} images written")

    def close(self) -> None:
        if self.meter is not None:
            self.meter.close()


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
