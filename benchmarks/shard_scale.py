"""Cost of WebDataset shards as a source: planning, driver memory, and read+decode speed, shards vs files.

    python benchmarks/shard_scale.py --work /tmp/shard-scale                       # 10 and 1,000 shards x 1,000 images
    python benchmarks/shard_scale.py --work /tmp/shard-scale --shards 2,4 --per-shard 50 --files-limit 200 --decode 100  # quick

A synthetic corpus of small JPEGs (--image-side px, a few distinct images repeated) is written once
under --work as N tar shards of --per-shard images each (kept: the next run reuses it), and the
same images as one file per image for up to --files-limit images. With --s3 the shards (and the
files) of corpora up to --s3-max-shards shards are uploaded once to a local SeaweedFS server
(benchmarks/s3server.py) and measured there too.

Printed per corpus and store:
  planning   the run's planning (tar headers read, manifest written and sorted), in its own process:
             seconds, images/s, and that process's peak RSS (the driver's memory for planning)
  reading    one worker reading and decoding --decode images in manifest order, batches of
             --batch-size (stages.fetch_and_decode: one ranged read per shard and batch, or one GET
             per file): images/s
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

# Runs in a fresh process: its ru_maxrss is the planning's own peak, not this script's.
_PLAN_RUNNER = """
import json, resource, sys, tempfile, time
import pyarrow.fs as pafs
from batch_parse.storage.location import parse_location
from batch_parse.storage.manifest import write_manifest
from batch_parse.storage.sources import iter_units
uri, endpoint, fmt = sys.argv[1], sys.argv[2] or None, sys.argv[3]
source = parse_location(uri, endpoint)
start = time.perf_counter()
with tempfile.TemporaryDirectory() as scratch:
    stats = write_manifest(iter_units(source, fmt), f"{scratch}/manifest.parquet", pafs.LocalFileSystem())
    seconds = time.perf_counter() - start
    if len(sys.argv) > 4:
        import shutil
        shutil.copy(f"{scratch}/manifest.parquet", sys.argv[4])
print(json.dumps({"images": stats.listed, "seconds": seconds,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def synthetic_jpegs(count: int, side: int) -> list[bytes]:
    """A few distinct small JPEGs (smooth colour fields with a face-sized blob), repeated in the corpus."""
    from PIL import Image, ImageDraw

    images = []
    for i in range(count):
        image = Image.new("RGB", (side, side), (40 + 20 * i % 200, 90, 160 - 10 * i % 150))
        ImageDraw.Draw(image).ellipse((side // 4, side // 5, 3 * side // 4, 4 * side // 5), fill=(220, 180, 150))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


def write_corpus(root: Path, shards: int, per_shard: int, side: int, files_limit: int) -> tuple[Path, Path]:
    """(shards folder, files folder) of the corpus, written once (a marker file says it is complete)."""
    shard_dir, file_dir = root / f"shards-{shards}x{per_shard}-{side}", root / f"files-{min(files_limit, shards * per_shard)}-{side}"
    images = synthetic_jpegs(16, side)
    if not (shard_dir / "_complete").exists():
        shard_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        for s in range(shards):
            with tarfile.open(shard_dir / f"{s:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(per_shard):
                    for ext, data in (("jpg", images[(s + i) % len(images)]), ("txt", b"a caption")):
                        info = tarfile.TarInfo(f"{s:06d}{i:06d}.{ext}")
                        info.size, info.mtime = len(data), 1_700_000_000
                        tar.addfile(info, io.BytesIO(data))
        (shard_dir / "_complete").write_text("")
        print(f"  (wrote {shards:,} shards x {per_shard:,} images in {time.time() - start:.0f} s)", flush=True)
    if not (file_dir / "_complete").exists():
        file_dir.mkdir(parents=True, exist_ok=True)
        for i in range(min(files_limit, shards * per_shard)):
            folder = file_dir / f"{i // 1000:04d}"
            folder.mkdir(exist_ok=True)
            (folder / f"{i:08d}.jpg").write_bytes(images[i % len(images)])
        (file_dir / "_complete").write_text("")
    return shard_dir, file_dir


def plan(uri: str, endpoint: str | None, fmt: str, manifest: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _PLAN_RUNNER, uri, endpoint or "", fmt, str(manifest)], env=env,
                          capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"planning {uri} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_rate(uri: str, endpoint: str | None, fmt: str, manifest: Path, images: int, batch_size: int) -> float:
    """Images/s one worker reads and decodes, in manifest (id) order."""
    import pyarrow.parquet as pq

    from batch_parse.pipeline import stages
    from batch_parse.storage.location import parse_location

    source = parse_location(uri, endpoint)
    table = pq.read_table(manifest).slice(0, images)
    start, done = time.perf_counter(), 0
    for batch in table.to_batches(max_chunksize=batch_size):
        columns = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.schema.names}
        out = stages.fetch_and_decode(columns, source, 50_000_000, source_format=fmt)
        bad = [e for e in out["error"] if e]
        if bad:
            raise SystemExit(f"reading {uri} failed: {bad[0]}")
        done += len(out["image"])
    return done / (time.perf_counter() - start)


def upload(server, folder: Path, bucket: str, prefix: str) -> str:
    import s3server

    marker = f"{prefix}/_uploaded"
    client = server.client()
    server.make_bucket(bucket)
    try:
        client.head_object(Bucket=bucket, Key=marker)
    except client.exceptions.ClientError:
        files = [p for p in folder.rglob("*") if p.is_file() and p.name != "_complete"]
        start = time.time()
        for path in files:  # keys keep the folder layout under the prefix
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())
        client.put_object(Bucket=bucket, Key=marker, Body=b"")
        print(f"  (uploaded {len(files):,} objects in {time.time() - start:.0f} s)", flush=True)
    del s3server
    return f"s3://{bucket}/{prefix}"


def measure(label: str, uri: str, endpoint: str | None, fmt: str, work: Path, decode: int, batch_size: int) -> None:
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        manifest = Path(scratch) / "manifest.parquet"
        planned = plan(uri, endpoint, fmt, manifest)
        rate = read_rate(uri, endpoint, fmt, manifest, decode, batch_size)
    print(f"  {label:<34} planning {planned['seconds']:8.2f} s  {planned['images'] / max(planned['seconds'], 1e-9):>9,.0f} images/s"
          f"  peak RSS {planned['peak_mb']:6.0f} MB   read+decode {rate:7,.0f} images/s per worker", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the corpus (kept) and scratch files.")
    parser.add_argument("--shards", default="10,1000", help="Comma-separated shard counts (default 10,1000).")
    parser.add_argument("--per-shard", type=int, default=1000, help="Images per shard (default 1000).")
    parser.add_argument("--image-side", type=int, default=64, help="Side of the synthetic JPEGs in px (default 64).")
    parser.add_argument("--files-limit", type=int, default=10_000, help="Most images written as one file each (default 10000).")
    parser.add_argument("--decode", type=int, default=2000, help="Images each read+decode measure reads (default 2000).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--s3", action="store_true", help="Also measure on a local SeaweedFS server (needs weed).")
    parser.add_argument("--s3-max-shards", type=int, default=10, help="With --s3, upload corpora of at most this many shards (default 10).")
    args = parser.parse_args(argv)
    try:
        counts = [int(c) for c in args.shards.split(",")]
    except ValueError:
        parser.error(f"--shards must be comma-separated integers, got {args.shards!r}")
    if min(counts) < 1 or args.per_shard < 1 or args.decode < 1:
        parser.error("--shards, --per-shard and --decode must be >= 1")
    args.work.mkdir(parents=True, exist_ok=True)
    flags = " ".join(f for f in ("avx512_bf16", "amx") if f in Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").exists() else ""
    print(f"shard_scale: {os.cpu_count()} CPUs ({flags or 'no avx512_bf16/amx'}), {args.per_shard:,} images per shard, "
          f"{args.image_side}px JPEGs", flush=True)
    server_ctx = None
    if args.s3:
        import s3server

        server_ctx = s3server.running(args.work / "seaweedfs")
        server = server_ctx.__enter__()
        for name, value in server.env().items():
            os.environ[name] = value
    try:
        for shards in counts:
            shard_dir, file_dir = write_corpus(args.work, shards, args.per_shard, args.image_side, args.files_limit)
            files = min(args.files_limit, shards * args.per_shard)
            print(f"{shards:,} shards x {args.per_shard:,} = {shards * args.per_shard:,} images", flush=True)
            decode = min(args.decode, files, shards * args.per_shard)
            measure(f"local, {shards:,} shards", str(shard_dir), None, "webdataset", args.work, decode, args.batch_size)
            measure(f"local, {files:,} files (one per image)", str(file_dir), None, "files", args.work, decode, args.batch_size)
            if args.s3 and shards <= args.s3_max_shards:
                uri = upload(server, shard_dir, "shard-scale", shard_dir.name)
                measure(f"S3, {shards:,} shards", uri, server.endpoint_url, "webdataset", args.work, decode, args.batch_size)
                uri = upload(server, file_dir, "shard-scale", file_dir.name)
                measure(f"S3, {files:,} files (one per image)", uri, server.endpoint_url, "files", args.work, decode, args.batch_size)
    finally:
        if server_ctx is not None:
            server_ctx.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
