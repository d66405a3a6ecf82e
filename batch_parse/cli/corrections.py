"""`batch-parse import`: labels corrected in Label Studio or CVAT, back as a batch-parse dataset."""

from __future__ import annotations

from pathlib import Path

import click

from batch_parse.cli.redact import echo

TOOLS = ("labelstudio", "cvat")  # batch_parse.corrections.TOOLS, without importing numpy and pyarrow for --help


@click.command("import")
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--from", "tool", type=click.Choice(TOOLS), required=True, help="The tool SRC was exported from.")
@click.option("--original", required=True, help="The batch-parse output the review export was made from (local or s3://).")
@click.option("--helen", type=click.Path(file_okay=False, path_type=Path),
              help="Also write the corrected faces, aligned, in the Helen layout `batch-parse train` reads.")
@click.option("--skip-unknown-labels", is_flag=True,
              help="Leave out regions painted with a class ORIGINAL's model lacks (e.g. skin on a 9-class output) "
                   "instead of refusing the import.")
@click.option("--endpoint-url", help="S3-compatible endpoint.  [default: AWS]")
def import_(src: Path, out: Path, tool: str, original: str, helen: Path | None, skip_unknown_labels: bool,
            endpoint_url: str | None) -> None:
    """Import corrected labels from Label Studio or CVAT.

    SRC is Label Studio's Export > JSON of a project made from `export --to labelstudio`, or the
    zip of CVAT's Export > Segmentation mask 1.1. OUT (a new folder) gets the reviewed photos' face
    rows in the output's schema, label_source = human, joinable to ORIGINAL's by (id, face_index)
    (README: "Corrections come back").
    """
    from batch_parse.corrections import import_corrections

    from batch_parse.storage.location import parse_location

    result = import_corrections(src, out, tool, parse_location(original, endpoint_url), helen=helen,
                                skip_unknown_labels=skip_unknown_labels)
    for line in result.lines():
        echo(line)


COMMANDS = [import_]
