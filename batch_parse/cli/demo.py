"""`batch-parse demo`: the whole product on the bundled photos, no cluster and no cloud."""

from __future__ import annotations

from pathlib import Path

import click

from batch_parse.cli.redact import echo


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"),
              show_default=True, help="Folder for the Parquet output and the overlays.")
def demo(out_dir: Path) -> None:
    """Label the bundled demo photos locally and render them."""
    from batch_parse.demo import IMAGES_DIR
    from batch_parse.pipeline.job import run_job
    from batch_parse.pipeline.options import JobOptions
    from batch_parse.report.inspect import inspect_output
    from batch_parse.report.render import render_output

    from batch_parse.pipeline.ray_noise import filter_native_stderr

    labels = out_dir / "labels"
    filter_native_stderr()  # Ray's C++ log lines off the terminal (unless --verbose), as `run`
    summary = run_job(JobOptions(source=str(IMAGES_DIR), output=str(labels), batch_size=4))
    for line in summary.lines():
        echo(line)
    for line in inspect_output(str(labels)):
        echo(line)
    index = render_output(str(labels), out_dir / "render", limit=50)
    echo(f"overlays: open {index.resolve()} in a browser")


COMMANDS = [demo]
