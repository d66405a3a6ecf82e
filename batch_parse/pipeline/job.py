"""The labeling job: list the source, skip what is committed, then one Ray Data chain to Parquet.

    OUTPUT/data/*.parquet           the labels (schema.py), one row per face: the dataset
    OUTPUT/.batch-parse/            control state (output/layout.py): lease, source and model
                                    records, index, manifests, staging

Under the run's lease: move a legacy layout (migrate.py), publish and check what killed runs left
(commit.py), list the source leaving out what is committed, label into the run's staging folder,
then publish the new files into data/ and check and seal them, every commit fenced on the lease.
Resume and incremental runs come from commit.py: the rows already in data/ are the checkpoint.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone

import botocore.exceptions as boto_errors
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_parse.model.weights import file_sha256, resolve, weights_class_names
from batch_parse.output.layout import OutputLayout
from batch_parse.pipeline import commit, migrate, plan, ray_noise, ray_reaper, stages
from batch_parse.pipeline.options import JobOptions
from batch_parse.pipeline.progress import ProgressPrinter, start_counter
from batch_parse.model.licence import weights_licence
from batch_parse.output.schema import output_schema
from batch_parse.pipeline.summary import JobSummary
from batch_parse.output import lease
from batch_parse.storage.location import Location
from batch_parse.storage.manifest import remove_partial_manifests
from batch_parse.storage.s3 import StorageError, abort_unfinished_uploads, check_access, describe_error
from batch_parse.output.model_identity import claim_model
from batch_parse.output.source_identity import canonical_source, claim_source, data_file_check, record_source


def connect_ray() -> None:
    """Join the cluster in RAY_ADDRESS (or the one `ray job submit` runs us in), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    logs = ray_noise.init_kwargs()  # our lines only, unless --verbose
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**logs)
    else:
        # "local" forces a fresh single-machine cluster: never join a stray `ray start` by accident.
        ray.init(address="local", include_dashboard=False, **logs)
        _start_reaper()


_reapers: list[subprocess.Popen] = []  # held for the driver's life: their pipes close when it ends


def _start_reaper() -> None:
    """Start ray_reaper.py on the local cluster just started, so it goes within a second of this driver."""
    import ray

    try:
        processes = ray._private.worker._global_node.all_processes  # private: Ray may move it
        raylet = [p.process.pid for p in processes["raylet"]]
        heads = [p.process.pid for name, infos in processes.items() if name != "raylet" for p in infos]
    except (AttributeError, KeyError, IndexError):
        logging.getLogger(__name__).debug("cannot find the local Ray's processes: no reaper")
        return
    _reapers.append(subprocess.Popen(
        [sys.executable, os.path.abspath(ray_reaper.__file__), *map(str, raylet[:1] + heads)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or a kill of our process group must not stop it before it acts
    ))  # fmt: skip


def run_job(options: JobOptions) -> JobSummary:
    source, output = plan.check_locations(options)  # the CLI calls it too, before torch and Ray are imported
    model_name, weights_path = resolve(options.model)
    sha = file_sha256(weights_path)
    model_version = f"{model_name}@{sha[:8]}"
    fs = output.filesystem()
    layout = OutputLayout(output)
    with lease.acquire(output) as held:
        summary = JobSummary(output_dir=layout.data_uri, model_version=model_version)
        summary.migrated = migrate.migrate(fs, layout, sha, held.fence)
        # Another source or other weights are refused before any work; this run's are recorded
        # once the listing found images (an empty or mistyped source must not claim the output).
        recorded = (claim_source(fs, output, source, plan.resolve_source_format(options, source), record=False),
                    claim_model(fs, output, model_version, sha, record=False))
        return _run_on_output(options, fs, source, output, layout, model_version, sha, held.fence, summary, recorded)


def _run_on_output(options: JobOptions, fs, source: Location, output: Location, layout: OutputLayout, model_version: str,
                   sha: str, fence: commit.Fence, summary: JobSummary, recorded: tuple[bool, bool] = (True, True)) -> JobSummary:
    """Recover, list, label, publish, verify: everything done to the output, under run_job's lease."""
    data_dir, index_dir = layout.data_dir, layout.index_dir
    t0 = time.time()
    manifests_dir = layout.manifests_dir
    # What a killed run left half written: partial manifests and rewrites, unfinished S3 uploads;
    # what it had labelled but not published is published now, and checked below.
    summary.leftovers_removed = remove_partial_manifests(fs, manifests_dir) + commit.remove_partial_rewrites(fs, data_dir, fence)
    if output.is_s3:
        summary.leftovers_removed += abort_unfinished_uploads(output)
    adopted, unfinished = commit.publish_staged(fs, layout.staging_root, data_dir, fence)
    summary.adopted_files, summary.leftovers_removed = adopted, summary.leftovers_removed + unfinished
    with summary.timed("recovery"):
        before = commit.recover(fs, data_dir, index_dir, retry_errors=options.retry_errors, fence=fence,
                                schema=run_schema(options, source, model_version, sha),
                                check=data_file_check(output, source, model_version, sha, options.source_format))
    summary.recovered_incomplete = len(before.removed_incomplete)
    summary.duplicates_removed = before.duplicates_removed
    summary.incomplete_images_redone = before.incomplete_images
    summary.changed_files, summary.unvouched_images = before.changed_files, before.unvouched_images
    summary.edited_index_files = before.edited_index_files
    shown = lambda paths: [layout.location.join("data", p[len(data_dir) + 1 :]) for p in paths]  # noqa: E731
    summary.foreign_files, summary.correction_files = shown(before.foreign), shown(before.corrections)
    summary.not_parquet_files, summary.adopted_rows_files = shown(before.not_parquet), shown(before.adopted)
    summary.retried, summary.not_retried = before.retry_cleared, before.retryable_kept
    summary.data_files, summary.data_files_read = len(before.files), before.scanned
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    run_id = f"{stamp}-{os.getpid()}"
    manifest_path = f"{manifests_dir}/{stamp}.parquet"
    manifest = plan.list_todo(options, source, fs, manifest_path, before.index)  # `run --dry-run` lists the same way
    summary.phases.update(listing=manifest.list_seconds, exclusion=manifest.exclude_seconds)
    summary.listed, summary.already_done = manifest.listed, manifest.excluded
    summary.skipped_non_image = manifest.skipped_non_image
    summary.skipped_unreadable, summary.unreadable_examples = manifest.skipped_unreadable, manifest.unreadable_examples
    summary.skipped_second_path, summary.second_path_examples = manifest.skipped_second_path, manifest.second_path_examples
    summary.non_image_examples, summary.skipped_system, summary.system_examples = (
        manifest.non_image_examples, manifest.skipped_system, manifest.system_examples)
    source_recorded, model_recorded = recorded
    if not source_recorded and manifest.listed == 0:  # a mistyped or empty source must not claim the output
        raise ValueError(f"source {source.uri} is empty: {summary.empty_source_detail()}; nothing labelled, "
                         f"and {output.uri} was not claimed for it")
    if manifest.listed and not (source_recorded and model_recorded):
        fence()
        if not source_recorded:
            record_source(fs, output, source, options.source_format)
        claim_model(fs, output, model_version, sha)
    if manifest.written == 0:  # a run that found nothing leaves nothing behind
        summary.seconds = time.time() - t0
        return summary

    staging = layout.staging_dir(run_id)
    with summary.timed("labelling"), commit.Publisher(fs, staging, data_dir, fence):
        _label(options, fs, source, manifest_path, staging, model_version, sha, manifest.written, [output, source])

    with summary.timed("check"):
        commit.publish_staged(fs, staging, data_dir, fence)
        after = commit.recover(fs, data_dir, index_dir, fence=fence)  # checks and seals this run's new files
    summary.duplicates_removed += after.duplicates_removed
    summary.new_files = sorted(set(after.files) - set(before.files))
    _count_rows(summary, fs, summary.new_files)
    summary.seconds = time.time() - t0
    return summary


def _label(options: JobOptions, fs, source: Location, manifest_path: str, data_dir: str, model_version: str, sha: str, todo: int,
           locations: list[Location]) -> None:
    """The Ray Data chain: manifest -> fetch+decode -> model actors -> encode -> Parquet.

    Storage failures that stop it (S3 down while Ray started, or while writing) end as one
    StorageError line naming the store, not as a Ray traceback.
    """

    connect_ray()
    for location in locations:  # S3 may have gone while Ray started (seconds): say so before Ray Data does
        check_access(location)
    try:
        _run_chain(options, fs, source, manifest_path, data_dir, model_version, sha, todo)
    except Exception as exc:
        cause = _root_cause(exc)
        if not isinstance(cause, (OSError, StorageError, boto_errors.BotoCoreError, boto_errors.ClientError)):
            raise
        raise StorageError(f"labelling stopped: {describe_error(cause, locations[0])}; "
                           "rerun the same command to finish (committed rows are kept)") from exc


def _root_cause(exc: BaseException) -> BaseException:
    """The error under Ray's wrappers (RayTaskError.cause, Ray Data's UserCodeException and re-raises)."""
    from ray.exceptions import RayError

    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) if isinstance(exc, RayError) else None
        inner = inner or exc.__cause__
        if inner is None or not (isinstance(exc, RayError) or type(exc).__module__.startswith("ray")):
            return exc
        exc = inner
    return exc


def _run_chain(options: JobOptions, fs, source: Location, manifest_path: str, data_dir: str, model_version: str, sha: str, todo: int) -> None:
    import ray

    ctx = ray.data.DataContext.get_current()
    # Our own one-line progress (progress.py) replaces Ray's per-operator bars and logs.
    ctx.enable_progress_bars = False
    ray_noise.quiet_ray_data()
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    device = options.device or ("cuda" if gpus > 0 else "cpu")
    schema = run_schema(options, source, model_version, sha)
    counter = start_counter()

    with ProgressPrinter(counter, todo):
        (
            ray.data.read_parquet(manifest_path, filesystem=fs)
            # Small blocks: work spreads over actors, progress moves, and a crash loses little.
            .repartition(target_num_rows_per_block=options.batch_size)
            .map_batches(
                stages.fetch_and_decode,
                fn_kwargs={"source": source, "max_pixels": options.max_pixels, "source_format": options.source_format,
                           "image_column": options.image_column,
                           "max_bytes": options.max_bytes, "fetch_attempts": options.fetch_attempts},
                # Same size as the model's batches: Ray fuses this stage into the actors on CPU-only
                # nodes, and a larger batch there would make each actor task hold several batches
                # (output, progress and commits would then move in bigger, later steps).
                batch_size=options.batch_size,
                num_cpus=1,
            )
            .map_batches(
                stages.FaceParseActor,
                fn_constructor_kwargs={"model": options.model, "device": device, "threads": stages.actor_threads(options, gpus > 0),
                                       "policy": options.policy, "progress": counter},
                batch_size=options.batch_size,
                compute=ray.data.ActorPoolStrategy(min_size=options.min_actors, max_size=options.max_actors),
                num_gpus=gpus,
                num_cpus=options.cpus_per_actor,
            )
            .map_batches(
                stages.encode_rows,
                fn_kwargs={"schema": schema, "model_version": model_version, "crop_format": options.crop_format,
                           "jpeg_quality": options.jpeg_quality},
                batch_size=options.batch_size,
                num_cpus=1,
            )
            .write_parquet(
                data_dir,
                filesystem=fs,
                schema=schema,
                min_rows_per_file=min(options.rows_per_file, todo),
                max_rows_per_file=options.rows_per_file,
            )
        )


def run_schema(options: JobOptions, source: Location, model_version: str, sha: str):
    """The schema (and metadata) of the files this run writes: the file's columns and class list
    follow the model's classes (no pixels_skin for 9-class weights); each file names its source as
    the output records it, so a data file checks on its own (source_identity.data_file_check)."""
    parquet = options.source_format == "parquet"
    return output_schema(model_version.split("@")[0], sha, options.crop_format, source=source,
                         policy=inference_policy(options), source_format=options.source_format,
                         image_column=options.image_column if parquet else None, key_column=options.key_column if parquet else None,
                         class_names=weights_class_names(resolve(options.model)[1]),
                         licence=weights_licence(*resolve(options.model)).as_dict(),
                         source_record=canonical_source(source, options.source_format))


def inference_policy(options: JobOptions) -> dict:
    """The run's inference choices, recorded in every output file's metadata (not in the weights)."""
    return options.policy.metadata()


def _count_rows(summary: JobSummary, fs, files: list[str]) -> None:
    images_with_faces: set[int] = set()  # an image's faces may span two files
    for path in files:
        with fs.open_input_file(path) as f:
            table = pq.read_table(f, columns=["id", "status", "error_code", "error"])
        errors = table.filter(pc.equal(table["status"], "error"))
        faces = table.filter(pc.equal(table["status"], "ok"))
        summary.rows_ok += faces.num_rows
        images_with_faces.update(pc.unique(faces["id"]).to_pylist())
        summary.no_face += table.num_rows - errors.num_rows - faces.num_rows
        codes = Counter(errors["error_code"].to_pylist())
        summary.errors.update(codes)
        for code, message in zip(errors["error_code"].to_pylist(), errors["error"].to_pylist()):
            summary.error_examples.setdefault(code, message)
    summary.images_ok = len(images_with_faces)
