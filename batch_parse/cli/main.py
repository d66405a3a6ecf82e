"""The `batch-parse` command: one click group whose verbs run, submit and inspect labeling jobs."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batch_parse.cli import demo, export, jobs, model
from batch_parse.cli.redact import echo, redact
from batch_parse.pipeline.options import CROP_FORMATS, FACE_MODES, JobOptions

_DEFAULTS = JobOptions(source="", output="")
_MESSAGE_LIMIT = 500
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


class _Group(click.Group):
    """A click group whose every failure is one `Error: ...` line on stderr, credentials scrubbed."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if _is_user_error(e):
                raise click.ClickException(_one_line(e)) from e
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {_one_line(e)} (run `batch-parse --debug ...` for the traceback)"
            ) from e

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            message = e.format_message()
            if isinstance(e, click.UsageError) and e.ctx is not None:
                message = f"{message} (see `{e.ctx.command_path} --help`)"
            click.echo(f"Error: {redact(message)}", err=True)
            sys.exit(e.exit_code)
        except click.Abort as e:
            if isinstance(e.__cause__, KeyboardInterrupt):  # Ctrl-C (SIGINT): 128 + 2, as shells expect
                click.echo("Error: interrupted", err=True)
                sys.exit(EXIT_INTERRUPTED)
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        # With standalone_mode=False click returns ctx.exit()'s code instead of exiting.
        sys.exit(rv if isinstance(rv, int) else 0)


def _is_user_error(e: Exception) -> bool:
    """Errors a user causes and can fix (a typo, a missing file, no credentials, a cluster that is down)."""
    if isinstance(e, (ValueError, OSError)):  # OSError: connection, file, permission, pyarrow S3 errors
        return True
    import botocore.exceptions as be

    from batch_parse.storage.s3 import StorageError

    types = [be.ClientError, be.BotoCoreError, StorageError]  # BotoCoreError: NoCredentialsError, EndpointConnectionError, ...
    if "ray" in sys.modules:
        from ray.exceptions import AuthenticationError

        types.append(AuthenticationError)
    return isinstance(e, tuple(types))


def _one_line(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError) and e.filename:
        text = f"no such file or folder: {e.filename}"
    elif isinstance(e, PermissionError) and e.filename:
        text = f"permission denied: {e.filename}"
    else:
        text = " ".join(str(e).split()) or type(e).__name__
    text = redact(text)
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of unexpected errors.")
def cli(debug: bool) -> None:
    """Face parsing (STN-iCNN) of image corpora on Ray: S3 or a folder in, Parquet out."""


@cli.command()
@click.argument("src", required=False)
@click.argument("dst", required=False)
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Job spec YAML to run.")
@click.option("--model", help=f"Registry name or .safetensors path.  [default: {_DEFAULTS.model}]")
@click.option("--batch-size", type=int, help=f"Images per model call.  [default: {_DEFAULTS.batch_size}]")
@click.option("--min-actors", type=int, help=f"Model actors to start with.  [default: {_DEFAULTS.min_actors}]")
@click.option("--max-actors", type=int, help="Model actors to scale up to.  [default: the spec's, else --min-actors]")
@click.option("--gpus-per-actor", type=float, help="GPUs per model actor.  [default: 1 if the cluster has GPUs, else 0]")
@click.option("--cpus-per-actor", type=float, help=f"CPUs per model actor.  [default: {_DEFAULTS.cpus_per_actor:g}]")
@click.option("--crop-format", type=click.Choice(CROP_FORMATS), help=f"Encoding of part crops.  [default: {_DEFAULTS.crop_format}]")
@click.option("--jpeg-quality", type=int, help=f"Quality of JPEG crops, 1-100.  [default: {_DEFAULTS.jpeg_quality}]")
@click.option("--endpoint-url", help="S3-compatible endpoint (MinIO, SeaweedFS, R2...).  [default: AWS]")
@click.option("--max-pixels", type=int, help=f"Largest image to decode, in pixels.  [default: {_DEFAULTS.max_pixels}]")
@click.option("--max-bytes", type=int, help=f"Largest source object to fetch, in bytes; larger ones are error rows.  [default: {_DEFAULTS.max_bytes}]")
@click.option("--fetch-attempts", type=int,
              help=f"Tries per S3 object when the store fails in a way that can pass (backoff between).  [default: {_DEFAULTS.fetch_attempts}]")
@click.option("--retry-errors/--no-retry-errors", default=None,
              help="Redo images whose rows are retryable errors (fetch_failed, access_denied, throttled, model_failed) "
                   "from earlier runs.  [default: --retry-errors]")
@click.option("--object-list", help="Read SRC's keys from this object list instead of listing SRC: an S3 Inventory "
                                    "manifest.json, or Parquet with a `key` column (local or s3://).")
@click.option("--rows-per-file", type=int, help=f"Rows per output Parquet file.  [default: {_DEFAULTS.rows_per_file}]")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Model device.  [default: cuda when the actor has a GPU]")
@click.option("--faces", type=click.Choice(FACE_MODES),
              help=f"all: a row per detected face; largest: the largest face only; whole-image: no detector, "
                   f"each image is one face (aligned crops).  [default: {_DEFAULTS.faces}]")
@click.option("--min-face", type=int, help=f"Smallest face to detect, in pixels.  [default: {_DEFAULTS.min_face}]")
@click.option("--detector-threshold", type=float, help="Detector score a face needs, 0-1.  [default: the detector's, 0.9 for mtcnn]")
@click.pass_context
def run(ctx: click.Context, src: str | None, dst: str | None, spec_path: Path | None, **flags) -> None:
    """Label the images in SRC and write Parquet to DST.

    SRC and DST are s3://bucket/prefix URIs or local folders. With --spec JOB.yaml they come
    from the spec (see `batch-parse validate`); flags and arguments given here override it.
    Connects to the Ray cluster at RAY_ADDRESS when set, else starts a local one. Exits with 3
    when images failed with errors that can pass (the next run retries them), 1 on a job error.
    """
    from batch_parse.jobspec import load_job_spec, option_problems

    if spec_path is not None:
        options = load_job_spec(spec_path).options
    elif src is None or dst is None:
        raise click.UsageError("give SRC and DST, or --spec JOB.yaml")
    else:
        options = JobOptions(source=src, output=dst)
    if src is not None:
        options.source = src
    if dst is not None:
        options.output = dst
    for key, value in flags.items():
        if value is not None:
            setattr(options, key, value)
    if flags["max_actors"] is None and options.max_actors < options.min_actors:
        options.max_actors = options.min_actors  # `--min-actors 4` alone means a fixed pool of 4
    problems = option_problems(options)
    if problems:
        raise click.UsageError("; ".join(problems))

    # Checked before importing the job: a bad spec or URI must fail before Ray starts.
    from batch_parse.pipeline.job import run_job

    summary = run_job(options)
    for line in summary.lines():
        echo(line)
    ctx.exit(summary.exit_code)


@cli.command()
@click.argument("spec_path", metavar="JOB.yaml", type=click.Path(path_type=Path))
def validate(spec_path: Path) -> None:
    """Check a job spec and list every problem in it."""
    from batch_parse.jobspec import load_job_spec, validate_job_spec

    problems = validate_job_spec(spec_path)
    for problem in problems:
        echo(f"{spec_path}: {problem}")
    if problems:
        sys.exit(1)
    echo(f"ok: {load_job_spec(spec_path).name}")


@cli.command()
@click.argument("dst")
@click.option("--endpoint-url", help="S3-compatible endpoint.  [default: AWS]")
def inspect(dst: str, endpoint_url: str | None) -> None:
    """Print statistics of a job's Parquet output."""
    from batch_parse.report.inspect import inspect_output

    for line in inspect_output(dst, endpoint_url):
        echo(line)


@cli.command()
@click.argument("dst")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("batch-parse-render"),
              show_default=True, help="Folder for the overlays and index.html.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Images to render (the least confident first).")
@click.option("--endpoint-url", help="S3-compatible endpoint.  [default: AWS]")
def render(dst: str, out_dir: Path, limit: int, endpoint_url: str | None) -> None:
    """Draw label overlays of an output as an HTML page."""
    from batch_parse.report.render import render_output

    index = render_output(dst, out_dir, limit, endpoint_url)
    echo(f"wrote {index}")


for _command in (*jobs.COMMANDS, *model.COMMANDS, *demo.COMMANDS, *export.COMMANDS):
    cli.add_command(_command)
