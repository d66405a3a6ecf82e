"""The `batch-parse` command: one click group whose verbs run, submit and inspect labeling jobs."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batch_parse import __version__
from batch_parse.cli import EXIT_INTERRUPTED, exit_interrupted  # noqa: F401 (EXIT_INTERRUPTED: read from here too)
from batch_parse.cli import corrections, demo, export, jobs, model, progress
from batch_parse.cli.redact import echo, redact
from batch_parse.cli.policy import policy_options
from batch_parse.pipeline.options import CROP_FORMATS, SOURCE_FORMATS, JobOptions
from batch_parse.report import REVIEW_MIN_FACE

_DEFAULTS = JobOptions(source="", output="")
_MESSAGE_LIMIT = 500


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
                exit_interrupted()
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            # Click turns an interrupt into Abort only inside its context; one that lands in its
            # prelude (reading argv, the shell-completion check) comes out bare, and is still Ctrl-C.
            exit_interrupted()
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
@click.version_option(__version__, "--version", "-V", prog_name="batch-parse", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show the traceback of unexpected errors.")
@click.option("--verbose", "-v", is_flag=True, help="Show Ray's own logs too (its warnings, core worker and worker lines).")
def cli(debug: bool, verbose: bool) -> None:
    """Face parsing (STN-iCNN) of image corpora on Ray: S3 or a folder in, Parquet out."""
    from batch_parse.pipeline.ray_noise import set_verbose

    set_verbose(verbose)


def _spec_as_defaults(ctx: click.Context, _param, spec_path: Path | None) -> Path | None:
    """--spec (eager): the spec's options become the defaults of every other flag (click's default_map)."""
    if spec_path is not None:
        from dataclasses import asdict

        from batch_parse.jobspec import load_job_spec

        options = asdict(load_job_spec(spec_path).options)
        ctx.meta["spec_location"] = (options.pop("source"), options.pop("output"))
        options.pop("extra")
        ctx.default_map = {**(ctx.default_map or {}), **options}
    return spec_path


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


@cli.command()
@click.argument("src", required=False)
@click.argument("dst", required=False)
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path), is_eager=True, callback=_spec_as_defaults,
              help="Job spec YAML to run; its values become the defaults of the flags below.")
@click.option("--model", default=_DEFAULTS.model, show_default=True, help="Registry name or .safetensors path.")
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size, show_default=True, help="Images per model call.")
@click.option("--min-actors", type=int, default=_DEFAULTS.min_actors, show_default=True, help="Model actors to start with.")
@click.option("--max-actors", type=int, show_default="the spec's, else --min-actors", help="Model actors to scale up to.")
@click.option("--gpus-per-actor", type=float, show_default="1 if the cluster has GPUs, else 0", help="GPUs per model actor.")
@click.option("--cpus-per-actor", type=float, default=_DEFAULTS.cpus_per_actor, show_default=True, help="CPUs per model actor.")
@click.option("--crop-format", type=click.Choice(CROP_FORMATS), default=_DEFAULTS.crop_format, show_default=True,
              help="Encoding of part crops.")
@click.option("--jpeg-quality", type=int, default=_DEFAULTS.jpeg_quality, show_default=True, help="Quality of JPEG crops, 1-100.")
@click.option("--endpoint-url", show_default="AWS", help="S3-compatible endpoint (MinIO, SeaweedFS, R2...) of SRC and DST.")
@click.option("--source-endpoint-url", show_default="--endpoint-url", help="S3-compatible endpoint of SRC when it differs from DST's.")
@click.option("--output-endpoint-url", show_default="--endpoint-url", help="S3-compatible endpoint of DST when it differs from SRC's.")
@click.option("--source-anonymous/--no-source-anonymous", default=_DEFAULTS.source_anonymous, show_default=True,
              help="Read SRC with unsigned requests, no credentials (a public bucket).")
@click.option("--source-profile", show_default="the default AWS chain", help="AWS profile whose credentials read SRC.")
@click.option("--output-profile", show_default="the default AWS chain", help="AWS profile whose credentials write DST.")
@click.option("--max-pixels", type=int, default=_DEFAULTS.max_pixels, show_default=True, help="Largest image to decode, in pixels.")
@click.option("--max-bytes", type=int, default=_DEFAULTS.max_bytes, show_default=True,
              help="Largest source object to fetch, in bytes; larger ones are error rows.")
@click.option("--fetch-attempts", type=int, default=_DEFAULTS.fetch_attempts, show_default=True,
              help="Tries per S3 object when the store fails in a way that can pass (backoff between).")
@click.option("--retry-errors/--no-retry-errors", default=_DEFAULTS.retry_errors, show_default=True,
              help="Redo images whose rows are retryable errors (fetch_failed, access_denied, throttled, model_failed) "
                   "from earlier runs.")
@click.option("--object-list", help="Read SRC's keys from this object list instead of listing SRC: an S3 Inventory "
                                    "manifest.json, or Parquet with a `key` column (local or s3://).")
@click.option("--source-format", type=click.Choice(SOURCE_FORMATS), default=_DEFAULTS.source_format, show_default=True,
              help="What SRC holds: image files, WebDataset .tar shards, or Parquet image tables; auto: by the extensions listed.")
@click.option("--image-column", default=_DEFAULTS.image_column, show_default=True,
              help="Parquet sources: the column of image bytes (binary, or Hugging Face's {bytes, path} struct).")
@click.option("--key-column", show_default="the row number in its file", help="Parquet sources: the column that names each image.")
@click.option("--rows-per-file", type=int, default=_DEFAULTS.rows_per_file, show_default=True, help="Rows per output Parquet file.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), show_default="cuda when the actor has a GPU", help="Model device.")
@policy_options(_DEFAULTS.policy)
@click.option("--dry-run", is_flag=True, help="List SRC and say how many images are listed, already done and to do; "
                                               "label nothing, start no Ray and write nothing to DST.")
@click.pass_context
def run(ctx: click.Context, src: str | None, dst: str | None, spec_path: Path | None, dry_run: bool, **flags) -> None:
    """Label the images in SRC and write Parquet to DST.

    SRC and DST are s3://bucket/prefix URIs or local folders. With --spec JOB.yaml they come
    from the spec (see `batch-parse validate`); flags and arguments given here override it.
    Connects to the Ray cluster at RAY_ADDRESS when set, else starts a local one. Exits with 3
    when images failed with errors that can pass (the next run retries them), 1 on a job error.
    """
    from batch_parse.jobspec import option_problems

    spec_source, spec_output = ctx.meta.get("spec_location", (None, None))
    if spec_path is None and (src is None or dst is None):
        raise click.UsageError("give SRC and DST, or --spec JOB.yaml")
    options = JobOptions(source=src or spec_source, output=dst or spec_output, **flags)
    if options.max_actors is None or (not _given(ctx, "max_actors") and options.max_actors < options.min_actors):
        options.max_actors = options.min_actors  # `--min-actors 4` alone means a fixed pool of 4
    problems = option_problems(options)
    if problems:
        raise click.UsageError("; ".join(problems))

    # Checked before importing the job (torch, Ray): a bad spec, location or source fails at once, in one line.
    from batch_parse.pipeline import plan

    if dry_run:
        for line in plan.dry_run(options).lines():
            echo(line)
        return
    plan.check_locations(options)
    from batch_parse.pipeline.job import run_job

    from batch_parse.pipeline.ray_noise import filter_native_stderr

    filter_native_stderr()  # Ray's C++ log lines off the terminal (unless --verbose)
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

    from batch_parse.storage.location import parse_location

    for line in inspect_output(parse_location(dst, endpoint_url)):
        echo(line)


@cli.command()
@click.argument("dst")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("batch-parse-render"),
              show_default=True, help="Folder for the overlays and index.html.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Faces to draw, least confident (lowest parse score) first; a group photo is drawn once more whole. "
                   "Up to as many images without a face and error rows are listed.")
@click.option("--where", help="Show only rows matching COLUMN OP VALUE clauses joined by 'and', as `export --where`, "
                              "e.g. \"face_score >= 0.99 and mouth_confidence < 0.8\".")
@click.option("--min-face", type=click.FloatRange(min=0), default=REVIEW_MIN_FACE, show_default=True, metavar="PX",
              help="Show faces whose box is at least PX pixels on its shorter side (smaller ones cannot be reviewed; "
                   "they are counted). 0 shows every face.")
@click.option("--endpoint-url", show_default="AWS", help="S3-compatible endpoint.")
def render(dst: str, out_dir: Path, limit: int, where: str | None, min_face: float, endpoint_url: str | None) -> None:
    """Draw label overlays of an output as an HTML page."""
    from batch_parse.report.render import render as render_pages

    from batch_parse.storage.location import parse_location

    index, selection = render_pages(parse_location(dst, endpoint_url), out_dir, limit, where=where, min_face=min_face)
    echo(f"drew {len(selection.rows)} of {selection.ok_total:,} face(s), lowest parse score first"
         + (f"; {selection.faces_too_small:,} face(s) under {min_face:g} px not shown (--min-face 0 shows them)"
            if selection.faces_too_small else ""))
    echo(f"wrote {index}")


for _command in (*jobs.COMMANDS, *model.COMMANDS, *demo.COMMANDS, *export.COMMANDS, *corrections.COMMANDS, *progress.COMMANDS):
    cli.add_command(_command)
