"""Images/s of the whole labeling job on a local S3 server, against the model alone and a naive hand-written loop.

    python benchmarks/pipeline_throughput.py                 # 300 UTKFace crops, batch 16
    python benchmarks/pipeline_throughput.py --quick         # smoke run: 40 images
    python benchmarks/pipeline_throughput.py --images 1000 --batch-size 32 --source-dir DIR
    python benchmarks/pipeline_throughput.py --local --faces all --source-dir DIR   # local folder in and out, no S3

One run starts SeaweedFS (`weed mini`, benchmarks/s3server.py) on free ports in a temporary folder,
uploads the images to s3://bench/faces/ (with --local: links them into a local folder, and the job
writes to a local folder; no server) and measures, on the same images:
  (a) the job: run_job() from call to return (Ray start-up, listing, model load, labelling,
      encoding, writing, commit check), and its steady-state rate read from the job's own
      progress counter (the one its status line shows; FaceParseActor adds each labelled batch),
      polled every 0.1 s: images labelled after the first batch divided by the time from the
      first batch to the last. That excludes Ray start-up, model load, the first batch and
      whatever runs after the last batch; it needs at least two model batches. The poll hooks
      into job.ProgressPrinter from this script: the pipeline code is unchanged.
  (b) the model alone: parser.parse over batches of --batch-size on images decoded beforehand.
  (c) a naive loop: boto3 get_object, PIL decode, parse at batch 1, PNG label map, one Parquet file.
(b) and (c) use the job actor's torch thread count (stages.actor_threads) unless --threads says
otherwise, and exclude model loading. The same in-process pass that times (b) times the job's three
stage functions (fetch_and_decode, FaceParseActor, encode_rows) for the per-image breakdown. With CUDA,
GPU utilisation is sampled with nvidia-smi every 0.5 s while (a) runs.
"""

from __future__ import annotations

import argparse
import io
import statistics
from dataclasses import replace
from contextlib import contextmanager, nullcontext
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from botocore.config import Config
from PIL import Image

from batch_parse.faces.policy import FACE_MODES, WHOLE_IMAGE
from batch_parse.model.weights import file_sha256, resolve
from batch_parse.pipeline import job as job_module
from batch_parse.pipeline import stages
from batch_parse.pipeline.job import run_job
from batch_parse.pipeline.options import JobOptions
from batch_parse.output.schema import output_schema
from batch_parse.storage.listing import iter_objects
from batch_parse.storage.manifest import object_id
from batch_parse.storage.s3 import StorageError
from s3server import CLEARED_ENV, REGION, S3Server, S3ServerError, image_files, running, upload

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "utkface"
MODEL = "stn-icnn/default"
BUCKET = "bench"
PREFIX = "faces"
DEFAULT_IMAGES = 300
QUICK_IMAGES = 40
TARGET_JOB_VS_MODEL = 0.9  # issue 20: the job at >= 0.9x the model alone, steady state
GPU_SAMPLE_S = 0.5
PROGRESS_POLL_S = 0.1
WARMUP_IMAGES = 4  # first call pays thread-pool, allocator and CUDA set-up; not the model's steady cost


class BenchmarkError(Exception):
    """Something the user can fix or must know (missing images, a failed job); str() is one line."""


@dataclass
class JobTiming:
    images: int
    seconds: float  # run_job call to return
    steady_images: int = 0  # labelled after the first model batch
    steady_seconds: float = 0.0  # first model batch done -> last one done
    window: tuple[float, float] | None = None  # that span, epoch seconds (to slice GPU samples)
    before_s: float = 0.0  # call -> first model batch done (Ray start-up, listing, model load, first batch)
    after_s: float = 0.0  # last model batch done -> return (encode and write left over, commit check)


@dataclass
class StageTiming:
    images: int
    decode_s: float = 0.0  # fetch_and_decode (S3 GET on 16 threads + Pillow decode)
    model_s: float = 0.0  # FaceParseActor.__call__ (detect + parse + part crops)
    parse_s: float = 0.0  # detect + parse alone (parser.parse in whole-image mode): measurement (b)
    encode_s: float = 0.0  # encode_rows (PNG label map, 6 crops, Arrow table)
    errors: Counter = field(default_factory=Counter)


class GpuSampler:
    """nvidia-smi's utilization.gpu every 0.5 s on a thread, while the `with` block runs."""

    def __init__(self) -> None:
        # The GPU Ray's one actor gets; nvidia-smi --id takes an index or a UUID alike.
        self.gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"
        self.samples: list[tuple[float, float]] = []  # (epoch seconds, percent)
        self.problem = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        command = ["nvidia-smi", f"--id={self.gpu}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while True:
            try:
                out = subprocess.run(command, capture_output=True, text=True, timeout=5, check=True).stdout
                self.samples.append((time.time(), float(out.split()[0])))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
                self.problem = f"nvidia-smi failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                return
            if self._stop.wait(GPU_SAMPLE_S):
                return

    def __enter__(self) -> "GpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, window: tuple[float, float] | None) -> str:
        if not self.samples:
            return f"GPU {self.gpu} utilisation during (a): no samples ({self.problem or 'job too short'})"
        values = [v for _, v in self.samples]
        text = f"GPU {self.gpu} utilisation during (a), {len(values)} samples every {GPU_SAMPLE_S} s: mean {np.mean(values):.0f}%, max {max(values):.0f}%"
        if window:
            steady = [v for t, v in self.samples if window[0] <= t <= window[1]]
            if steady:
                text += f"; steady state mean {np.mean(steady):.0f}% ({len(steady)} samples)"
        return text


# ---- (a) the job ----


@contextmanager
def progress_samples(samples: list[tuple[float, int]]) -> Iterator[None]:
    """While the block runs, every job records (epoch seconds, images done) from its progress counter."""
    import ray

    shown = job_module.ProgressPrinter

    class Recording(shown):
        def __enter__(self):
            self._poll_stop = threading.Event()
            self._poller = threading.Thread(target=self._poll, daemon=True)
            self._poller.start()
            return super().__enter__()

        def _poll(self) -> None:
            while not self._poll_stop.wait(PROGRESS_POLL_S):
                ok, errors, _ = ray.get(self.counter.totals.remote())
                samples.append((time.time(), ok + errors))

        def __exit__(self, *exc):
            self._poll_stop.set()
            self._poller.join()
            return super().__exit__(*exc)

    job_module.ProgressPrinter = Recording
    try:
        yield
    finally:
        job_module.ProgressPrinter = shown


def time_job(options: JobOptions, expected: int) -> JobTiming:
    samples: list[tuple[float, int]] = []
    with progress_samples(samples):
        called = time.time()
        summary = run_job(options)
        returned = time.time()
    if summary.images_ok + summary.no_face != expected:
        errors = ", ".join(f"{code} {n}" for code, n in summary.errors.most_common()) or "none"
        raise BenchmarkError(f"the job labelled {summary.images_ok + summary.no_face} of {expected} images (errors: {errors})")
    timing = JobTiming(expected, returned - called)
    started = [(t, done) for t, done in samples if done > 0]
    if not started:
        raise BenchmarkError("no progress samples from the job (did job.py stop using ProgressPrinter?)")
    # The first sample showing the final count: the counter's last update may land after the last poll.
    first_t, first_done = started[0]
    last_t, last_done = next((t, done) for t, done in started if done == started[-1][1])
    timing.before_s, timing.after_s = first_t - called, returned - last_t
    if last_done > first_done:
        timing.steady_images, timing.steady_seconds = last_done - first_done, last_t - first_t
        timing.window = (first_t, last_t)
    return timing


# ---- (b) the model alone, and the job's stage functions in-process ----


def manifest_batch(options: JobOptions) -> dict[str, np.ndarray]:
    """The rows the job's manifest holds for the source (id, key, size, etag), as one numpy batch."""
    objects = list(iter_objects(options.source_location()))
    return {
        "id": np.array([object_id(o.key) for o in objects], dtype=np.int64),
        "key": np.array([o.key for o in objects], dtype=object),
        "size": np.array([o.size for o in objects], dtype=np.int64),
        "etag": np.array([o.etag for o in objects], dtype=object),
    }


def slices(batch: dict[str, np.ndarray], size: int):
    n = len(batch["id"])
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in batch.items()}


def concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def time_stages(options: JobOptions, device: str, threads: int, model_version: str, sha: str) -> tuple[StageTiming, object]:
    """Decode every image first, then parse in batches of batch_size, then encode; each stage timed."""
    rows = manifest_batch(options)
    timing = StageTiming(len(rows["id"]))
    decoded = []
    for batch in slices(rows, options.batch_size):  # as the job batches fetch+decode
        start = time.perf_counter()
        decoded.append(stages.fetch_and_decode(batch, options.source_location(), options.max_pixels))
        timing.decode_s += time.perf_counter() - start
    images = concat(decoded)
    timing.errors.update(c for c in images["error_code"] if c)

    # load_detector + load_parser + torch.set_num_threads, as in the job
    actor = stages.FaceParseActor(options.model, device, threads, policy=options.policy)
    parser = actor.parser
    faces_of = actor._faces_of
    ok_images = [im for im, code in zip(images["image"], images["error_code"]) if not code]
    faces_of(ok_images[:WARMUP_IMAGES])

    def timed_faces_of(batch_images):
        start = time.perf_counter()
        out = faces_of(batch_images)
        timing.parse_s += time.perf_counter() - start
        return out

    # Instance attribute over the method: the actor's own call path, with detect+parse timed inside it.
    actor._faces_of = timed_faces_of
    parsed = []
    for batch in slices(images, options.batch_size):
        start = time.perf_counter()
        parsed.append(actor(batch))
        timing.model_s += time.perf_counter() - start
    del actor._faces_of

    schema = output_schema(model_version.split("@")[0], sha, options.crop_format, source=options.source_location())
    for batch in parsed:
        start = time.perf_counter()
        stages.encode_rows(batch, schema, model_version, options.crop_format, options.jpeg_quality)
        timing.encode_s += time.perf_counter() - start
    return timing, parser


# ---- (c) the loop a user would write by hand ----


def naive_loop(server: S3Server | None, keys: list[str], parser, out_key: str, local_dir: Path | None = None) -> float:
    """boto3 GET (or a file read), PIL decode, parse one image at a time, PNG label map, rows in a list, one Parquet file."""
    start = time.perf_counter()
    s3 = None if server is None else boto3.client("s3", endpoint_url=server.endpoint_url, config=Config(s3={"addressing_style": "path"}))
    rows = []
    for key in keys:
        data = (local_dir / key).read_bytes() if s3 is None else s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        result = parser.parse([image])[0]
        png = io.BytesIO()
        Image.fromarray(result.label_map).save(png, format="PNG")
        rows.append({"key": key, "label_map": png.getvalue(), "boxes": result.boxes.tolist(),
                     "confidences": result.confidences.tolist(), "class_pixels": result.class_pixels.tolist()})  # fmt: skip
    table = pa.Table.from_pylist(rows)
    if server is None:
        (local_dir.parent / out_key).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, str(local_dir.parent / out_key))
    else:
        fs = pafs.S3FileSystem(endpoint_override=server.endpoint_url.split("://", 1)[1], scheme="http", region=REGION)
        pq.write_table(table, f"{BUCKET}/{out_key}", filesystem=fs)
    return time.perf_counter() - start


def merge_runs(runs: list[tuple[JobTiming, StageTiming]]) -> tuple[JobTiming, StageTiming]:
    """Repeats summed: the report's rates are then totals over totals."""
    jobs, sts = [j for j, _ in runs], [t for _, t in runs]
    job = JobTiming(sum(j.images for j in jobs), sum(j.seconds for j in jobs), sum(j.steady_images for j in jobs),
                    sum(j.steady_seconds for j in jobs), jobs[-1].window, sum(j.before_s for j in jobs), sum(j.after_s for j in jobs))
    st = StageTiming(sum(t.images for t in sts), sum(t.decode_s for t in sts), sum(t.model_s for t in sts),
                     sum(t.parse_s for t in sts), sum(t.encode_s for t in sts))
    return job, st


# ---- the report ----


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


def print_report(n: int, options: JobOptions, job: JobTiming, st: StageTiming, naive_s: float, gpu: GpuSampler | None) -> None:
    whole, steady = rate(job.images, job.seconds), rate(job.steady_images, job.steady_seconds)
    model, naive = rate(st.images, st.parse_s), rate(n, naive_s)
    b = options.batch_size
    print(f"\n{'measurement':<52}{'images':>8}{'seconds':>10}{'images/s':>10}")
    print(f"{'(a) job, run_job call to return':<52}{job.images:>8}{job.seconds:>10.2f}{whole:>10.2f}")
    if job.window:
        print(f"{'(a) job, steady state (progress counter)':<52}{job.steady_images:>8}{job.steady_seconds:>10.2f}{steady:>10.2f}")
    else:
        print(f"{'(a) job, steady state (progress counter)':<52}{'-':>8}{'-':>10}{'-':>10}   (one model batch: use more images)")
    print(f"{f'(b) model alone ({options.faces}) at batch {b}':<52}{st.images:>8}{st.parse_s:>10.2f}{model:>10.2f}")
    print(f"{'(c) naive loop: boto3, PIL, parse at batch 1, PNG':<52}{n:>8}{naive_s:>10.2f}{naive:>10.2f}")
    best, measure = (steady, "steady state") if job.window else (whole, "call to return")
    verdict = f"target >= {TARGET_JOB_VS_MODEL} for {measure}: {'met' if best / model >= TARGET_JOB_VS_MODEL else 'NOT met'}"
    steady_b = f"steady state {steady / model:.2f}, " if job.window else ""
    steady_c = f"steady state {steady / naive:.2f}, " if job.window else ""
    print(f"ratio (a)/(b) job / model alone: {steady_b}call to return {whole / model:.2f} ({verdict})")
    print(f"ratio (a)/(c) job / naive loop: {steady_c}call to return {whole / naive:.2f}")
    print(f"(a) job phases: {job.before_s:.1f} s to the first labelled batch (Ray start-up, listing, model load), "
          f"{job.steady_seconds:.1f} s labelling the rest, {job.after_s:.1f} s from the last batch to return")  # fmt: skip
    per = 1000 / st.images
    print(
        f"where the time goes, ms per image (job's stage functions in-process, batch {b}): "
        f"fetch+decode {st.decode_s * per:.1f}, model stage {st.model_s * per:.1f} (parse {st.parse_s * per:.1f}), "
        f"encode {st.encode_s * per:.1f}"
    )
    if gpu is not None:
        print(gpu.summary(job.window))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, help=f"number of images (default {DEFAULT_IMAGES}, --quick {QUICK_IMAGES})")
    p.add_argument("--batch-size", type=int, default=16, help="images per model call, job and (b) alike (default 16)")
    p.add_argument("--threads", type=int, help="torch threads for (b) and (c) (default: what the job's actor uses)")
    p.add_argument("--source-dir", type=Path, default=DEFAULT_SOURCE, help="folder of face images (default shared/data/utkface)")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_IMAGES} images unless --images is given")
    p.add_argument("--local", action="store_true", help="local folder in and out instead of the S3 server")
    p.add_argument("--repeats", type=int, default=1, help="alternate (a) and (b) this many times; rates are summed (default 1)")
    p.add_argument("--no-naive", action="store_true", help="skip (c), the naive loop (it runs at batch 1: slow on many images)")
    p.add_argument("--faces", choices=FACE_MODES, default=WHOLE_IMAGE,
                   help="the job's face mode; whole-image (default) suits the tight UTKFace crops, and then (b) is "
                        "the parser alone; with a detector (b) is detect + align + parse")
    args = p.parse_args(argv)
    args.images = args.images or (QUICK_IMAGES if args.quick else DEFAULT_IMAGES)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.images < 1 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        p.error("--images, --batch-size and --threads must be >= 1")
    return args


def benchmark(args: argparse.Namespace) -> None:
    files = image_files(args.source_dir)
    if len(files) < args.images:
        raise BenchmarkError(f"asked for {args.images} images, {args.source_dir} has {len(files)}")
    files = files[: args.images]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp, (nullcontext() if args.local else running(Path(tmp))) as server:
        os.environ.pop("RAY_ADDRESS", None)  # a remote cluster cannot reach our loopback server or temp folder
        if server is None:
            local_dir = Path(tmp) / PREFIX
            local_dir.mkdir()
            for f in files:  # links: the job lists this folder, which must hold exactly these images
                (local_dir / f.name).symlink_to(f.resolve())
            size = sum(f.stat().st_size for f in files)
            options = JobOptions(source=str(local_dir), output=str(Path(tmp) / f"out-{len(files)}"), model=MODEL,
                                 batch_size=args.batch_size, faces=args.faces)
        else:
            local_dir = None
            # The job's Ray workers inherit this environment: the server's test-only keys, no profile.
            for name in CLEARED_ENV:
                os.environ.pop(name, None)
            os.environ.update(server.env())
            size = upload(server, files, BUCKET, PREFIX)
            options = JobOptions(source=f"s3://{BUCKET}/{PREFIX}", output=f"s3://{BUCKET}/out-{len(files)}",
                                 model=MODEL, endpoint_url=server.endpoint_url, batch_size=args.batch_size,
                                 faces=args.faces)  # fmt: skip
        job_threads = stages.actor_threads(options, cuda)
        threads = args.threads or job_threads
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        where = "local folder" if server is None else "S3 server"
        print(f"pipeline throughput ({where}): {len(files)} images ({size / 1e6:.1f} MB) from {args.source_dir}, batch {args.batch_size}, "
              f"{device}, torch threads: job actor {job_threads}, (b)/(c) {threads}; {os.cpu_count()} cores, load average {load}")  # fmt: skip
        if threads != job_threads:
            print(f"note: --threads {threads} differs from the job actor's {job_threads}: (a) vs (b)/(c) is not like for like")

        gpu = GpuSampler() if cuda else None
        model_name, weights_path = resolve(MODEL)
        sha = file_sha256(weights_path)
        model_version = f"{model_name}@{sha[:8]}"
        runs: list[tuple[JobTiming, StageTiming]] = []
        for r in range(args.repeats):
            # Repeats alternate (a) and (b), each job into a fresh output, so that on a machine whose
            # load drifts the two are compared side by side; Ray stays up between them (idle).
            run_options = replace(options, output=f"{options.output}-r{r}") if args.repeats > 1 else options
            try:
                with gpu or nullcontext():
                    job = time_job(run_options, len(files))
            finally:
                if r == args.repeats - 1:
                    import ray

                    # Idle Ray processes would still take CPU from (b) and (c).
                    ray.shutdown()
            st, parser = time_stages(options, device, threads, model_version, sha)
            if st.errors:
                raise BenchmarkError(f"in-process decode failed for some images: {dict(st.errors)}")
            runs.append((job, st))
        if args.repeats > 1:
            ratios = []
            for r, (j, t) in enumerate(runs):
                steady, model = rate(j.steady_images, j.steady_seconds), rate(t.images, t.parse_s)
                ratios.append(steady / model)
                print(f"repeat {r}: (a) steady state {steady:.2f} images/s ({j.before_s:.1f} s to the first batch: Ray start-up, "
                      f"listing, model load), (b) model alone {model:.2f} images/s, ratio {steady / model:.2f}")
            print(f"median ratio (a) steady state / (b) over {args.repeats} repeats: {statistics.median(ratios):.2f}")
            job, st = merge_runs(runs)
        keys = [f.name if server is None else f"{PREFIX}/{f.name}" for f in files]
        naive_s = float("nan") if args.no_naive else naive_loop(server, keys, parser, f"naive-{len(files)}/labels.parquet", local_dir)
        print(f"model: {model_version}; (b) and (c) exclude model loading, (b) after a {WARMUP_IMAGES}-image warm-up call")
        print_report(len(files), options, job, st, naive_s, gpu)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        benchmark(args)
    except (BenchmarkError, S3ServerError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
