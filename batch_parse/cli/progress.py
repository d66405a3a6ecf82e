"""`batch-parse progress OUTPUT`: how far the latest run on an output got (report/progress.py); no Ray."""

from __future__ import annotations

import json

import click

from batch_parse.cli.redact import echo


@click.command()
@click.argument("dst", metavar="OUTPUT")
@click.option("--endpoint-url", show_default="AWS", help="S3-compatible endpoint.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
def progress(dst: str, endpoint_url: str | None, as_json: bool) -> None:
    """How far the latest run on OUTPUT got: done, pending, retryable.

    What the latest run set out to do (its manifest), how much of it is in the output, what is
    pending or failed with errors that can pass, whether a run holds OUTPUT now (holder, expiry)
    and what is staged but not published. Reads only; needs no Ray.
    """
    from batch_parse.report.progress import progress as read_progress

    from batch_parse.storage.location import parse_location

    result = read_progress(parse_location(dst, endpoint_url))
    if as_json:
        echo(json.dumps(result.to_dict(), indent=1))
        return
    for line in result.lines():
        echo(line)


COMMANDS = [progress]
