"""Cost of a run as the corpus grows: listing speed on SeaweedFS, and a run over 1M / 10M committed ids.

    python benchmarks/corpus_scale.py --work /tmp/corpus-scale            # everything (~20-30 min on 2 cores)
    python benchmarks/corpus_scale.py --work /tmp/corpus-scale --skip-listing --committed 1000000

Listing: a SeaweedFS bucket holding 20k and 200k keys in 100 folders (1-byte objects, uploaded
once and kept under --work), listed by the code before this change (one boto3 paginator, commit
44c4b5b), by one paginator with timestamps left unparsed, and fanned out over the folders.

Runs: synthetic outputs holding N committed ids (the real output schema, tiny rows: 1,000 rows
per data file as the job writes them) on local disk, plus 1,000 new 32x32 images to label (the
detector finds no face in them: the labelling part stays small and equal). Each run is a real
`run_job` in its own process, with its own local Ray, once with the code before this change
(a `git archive` of 44c4b5b) and once with this checkout; the output is a fresh hard-linked copy
of the synthetic one each time. Printed per run: wall time, the driver's peak RSS, and the
phases (recovery, listing, exclusion, labelling, the check after labelling). "after" runs on an
output already indexed (steady state: every run after the first); the one-time cost of indexing
an output written before indexes is printed too. Slopes are per million committed ids.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "44c4b5b"
FOLDERS = 100
NEW_IMAGES = 1000
ROWS_PER_FILE = 1000

sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))


# --- listing -------------------------------------------------------------------------------------

_LIST_RUNNER = """
import json, sys, time
from batch_parse.storage.listing import iter_objects
from batch_parse.storage.location import parse_location
import inspect
uri, endpoint, mode = sys.argv[1], sys.argv[2], sys.argv[3]
# The tree compared with may predate locations that own their store (an endpoint argument then).
owns_store = "endpoint_url" in inspect.signature(parse_location).parameters
args = (parse_location(uri, endpoint),) if owns_store else (parse_location(uri), endpoint)
kwargs = {"fan_out": True} if mode == "fanned" else {}
start = time.perf_counter()
n = sum(1 for _ in iter_objects(*args, **kwargs))
import batch_parse
print(json.dumps({"keys": n, "seconds": time.perf_counter() - start, "code": batch_parse.__file__}))
"""


def listing_benchmark(work: Path, sizes: list[int], before_tree: Path) -> list[tuple[str, dict[int, float]]]:
    import s3server

    results: dict[str, dict[int, float]] = {"one paginator (before, 44c4b5b)": {}, "one paginator, timestamps unparsed": {},
                                            f"fanned out over folders ({_threads()} threads)": {}}  # fmt: skip
    with s3server.running(work / "seaweedfs") as server:
        env = {**os.environ, **server.env()}
        for size in sizes:
            bucket = server.make_bucket(f"list{size}")
            _fill(server, bucket, size)
            uri = f"s3://{bucket}/k"
            for (label, tree, mode) in zip(results, (before_tree, REPO, REPO), ("serial", "serial", "fanned")):
                best = None
                for _ in range(2):  # the better of two: the machine is shared
                    # cwd: `python -c` puts the working folder first on sys.path, which must not be this checkout.
                    run = subprocess.run([sys.executable, "-c", _LIST_RUNNER, uri, server.endpoint_url, mode], env={**env, "PYTHONPATH": str(tree)},
                                         cwd=tree, capture_output=True, text=True, check=True)  # fmt: skip
                    got = json.loads(run.stdout.strip().splitlines()[-1])
                    assert got["keys"] == size and got["code"].startswith(str(tree)), (label, got)
                    rate = got["keys"] / got["seconds"]
                    best = rate if best is None else max(best, rate)
                results[label][size] = best
                print(f"  listing {size:>7,} keys: {label:<40} {best:>9,.0f} keys/s", flush=True)
    return list(results.items())


def _threads() -> int:
    from batch_parse.storage.listing import LIST_THREADS

    return LIST_THREADS


def _fill(server, bucket: str, size: int) -> None:
    client = server.client()
    have = sum(len(p.get("Contents", ())) for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="k/"))
    if have >= size:
        return
    start = time.time()
    keys = [f"k/{i % FOLDERS:03d}/{i:08d}.jpg" for i in range(size)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))
    print(f"  (uploaded {size:,} keys in {time.time() - start:.0f} s)", flush=True)


# --- runs over committed history -----------------------------------------------------------------

_RUN_RUNNER = """
import json, resource, sys, time
from batch_parse.pipeline import commit, job, plan
from batch_parse.pipeline.options import JobOptions
recover_s, calls = [], {}
def timed(name, fn, into):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append((name, time.perf_counter() - start))
    return wrapper
log = []
commit.recover = timed("recover", commit.recover, log)
plan.write_manifest = timed("manifest", plan.write_manifest, log)  # the run lists through plan.list_todo
job._label = timed("labelling", job._label, log)
start = time.perf_counter()
summary = job.run_job(JobOptions(source=sys.argv[1], output=sys.argv[2], batch_size=32, faces="all"))
wall = time.perf_counter() - start
phases = {}
for name, seconds in log:
    if name == "recover":
        name = "recovery" if "recovery" not in phases else "check"
    phases[name] = phases.get(name, 0.0) + seconds
phases.update(getattr(summary, "phases", {}) or {})
import batch_parse
print(json.dumps({"code": batch_parse.__file__, "wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "phases": phases,
                  "listed": summary.listed, "done": summary.already_done, "rows": summary.rows_written}))
"""

_ADOPT_RUNNER = """
import json, resource, sys, time
import pyarrow.fs as pafs
from batch_parse.pipeline import commit
start = time.perf_counter()
state = commit.recover(pafs.LocalFileSystem(), sys.argv[1] + "/data", sys.argv[1] + "/.batch-parse/index")
print(json.dumps({"wall": time.perf_counter() - start, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "files": len(state.files), "scanned": state.scanned}))
"""


def history_benchmark(work: Path, committed: list[int], before_tree: Path) -> dict:
    from batch_parse.model.weights import file_sha256, resolve
    from batch_parse.pipeline.migrate import version_folder
    from batch_parse.pipeline.options import DEFAULT_MODEL

    model_name, weights = resolve(DEFAULT_MODEL)
    version = version_folder(model_name, file_sha256(weights))
    source = work / "new-images"
    _new_images(source)
    results = {}
    for n in committed:
        base = work / f"committed-{n}"
        _synthetic_output(base / version / "data", n, model_name, file_sha256(weights))
        # Today's layout (output/layout.py): OUTPUT/data and OUTPUT/.batch-parse/index.
        indexed = work / f"committed-{n}-indexed-v2"
        if not (indexed / ".batch-parse" / "index").is_dir():
            _link_copy(base / version / "data", indexed / "data")
            adopt = _child(_ADOPT_RUNNER, REPO, str(indexed))
            (indexed / ".adoption.json").write_text(json.dumps(adopt))
        adopt = json.loads((indexed / ".adoption.json").read_text())
        print(f"  {n:>10,} ids: indexing an output written before indexes (once): {adopt['wall']:.1f} s, "
              f"peak RSS {adopt['rss_mb']:.0f} MB, {adopt['scanned']:,} files read", flush=True)
        results[n] = {"adoption": adopt}
        for label, tree, template in (("before", before_tree, base), ("after", REPO, indexed)):
            with tempfile.TemporaryDirectory(dir=work, prefix="run-") as tmp:
                output = Path(tmp) / "out"
                _link_copy(template, output)
                got = _child(_RUN_RUNNER, tree, str(source), str(output))
            assert got["rows"] == NEW_IMAGES and got["done"] == 0, got
            results[n][label] = got
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in got["phases"].items())
            print(f"  {n:>10,} ids, {label:<6}: wall {got['wall']:6.1f} s, driver peak RSS {got['rss_mb']:6.0f} MB; {phases}", flush=True)
    return results


def _child(runner: str, tree: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # cwd: `python -c` puts the working folder first on sys.path, which must not be this checkout.
    run = subprocess.run([sys.executable, "-c", runner, *args], env={**env, "PYTHONPATH": str(tree)}, cwd=tree, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({tree}):\n{run.stderr[-3000:]}")
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got.get("code", str(tree)).startswith(str(tree)), f"ran {got['code']}, not the code in {tree}"
    return got


def _new_images(folder: Path) -> None:
    if folder.is_dir() and len(list(folder.iterdir())) == NEW_IMAGES:
        return
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(NEW_IMAGES):
        Image.new("RGB", (32, 32), (i % 251, (7 * i) % 253, (13 * i) % 255)).save(folder / f"new-{i:05d}.jpg", quality=90)


def _synthetic_output(data_dir: Path, n: int, model_name: str, sha: str) -> None:
    files = n // ROWS_PER_FILE
    if data_dir.is_dir() and len(list(data_dir.iterdir())) == files:
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with ProcessPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        list(pool.map(_write_synthetic, [(str(data_dir), f, model_name, sha) for f in range(files)], chunksize=64))
    print(f"  (wrote {n:,} synthetic committed rows in {files:,} files in {time.time() - start:.0f} s)", flush=True)


def _write_synthetic(args: tuple[str, int, str, str]) -> None:
    from datetime import datetime, timezone

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batch_parse.output.schema import output_schema

    data_dir, f, model_name, sha = args
    schema = output_schema(model_name, sha, "jpeg")
    rng = np.random.default_rng(f)
    ids = rng.integers(0, 2**63 - 1, ROWS_PER_FILE, dtype=np.int64)
    n = ROWS_PER_FILE
    values = {
        "id": pa.array(ids), "key": pa.array([f"synthetic/{f:06d}/{i:04d}.jpg" for i in range(n)]),
        "etag": pa.array(["e"] * n), "size": pa.array(np.full(n, 1000, np.int64)),
        "face_index": pa.array(np.zeros(n, np.int32)), "face_count": pa.array(np.ones(n, np.int32)),
        "status": pa.array(["ok"] * n), "model_version": pa.array([f"{model_name}@{sha[:8]}"] * n),
        "processed_at": pa.array([datetime.now(timezone.utc)] * n, pa.timestamp("ms", tz="UTC")),
    }  # fmt: skip
    columns = [values[field.name] if field.name in values else pa.nulls(n, field.type) for field in schema]
    pq.write_table(pa.Table.from_arrays(columns, schema=schema), f"{data_dir}/synthetic-{f:06d}.parquet")


def _link_copy(src: Path, dst: Path) -> None:
    """dst mirrors src with hard links: runs only add files or replace them whole, never edit one in place."""
    for folder, _, names in os.walk(src):
        target = dst / Path(folder).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            if not name.startswith("."):
                os.link(Path(folder) / name, target / name)


def before_tree(work: Path) -> Path:
    tree = work / f"tree-{BEFORE_COMMIT}"
    if not (tree / "batch_parse").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_COMMIT], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def report(listing, runs: dict) -> None:
    print("\nlisting keys/s on SeaweedFS (this machine, shared 2 cores):")
    sizes = sorted({s for _, by_size in listing for s in by_size})
    print(f"  {'':<44}" + "".join(f"{s:>12,}" for s in sizes))
    for label, by_size in listing:
        print(f"  {label:<44}" + "".join(f"{by_size.get(s, 0):>12,.0f}" for s in sizes))
    if len(listing) == 3:
        serial, fanned = listing[0][1], listing[2][1]
        print("  fanned out / before: " + ", ".join(f"{fanned[s] / serial[s]:.1f}x at {s:,}" for s in sizes))
    if not runs:
        return
    print(f"\na run with {NEW_IMAGES:,} new images over N committed ids (local disk):")
    print(f"  {'N':>11} {'code':<7} {'wall s':>8} {'peak RSS MB':>12} {'recovery+exclusion s':>21} {'check after s':>14}")
    for n, got in sorted(runs.items()):
        for label in ("before", "after"):
            r = got[label]
            print(f"  {n:>11,} {label:<7} {r['wall']:>8.1f} {r['rss_mb']:>12.0f} {_rec_excl(r):>21.2f} {r['phases'].get('check', 0):>14.2f}")
    if len(runs) >= 2:
        lo, hi = min(runs), max(runs)
        millions = (hi - lo) / 1e6
        for label in ("before", "after"):
            a, b = runs[lo][label], runs[hi][label]
            print(f"  slope per 1M committed ids, {label:<6}: wall {(b['wall'] - a['wall']) / millions:+.2f} s, "
                  f"RSS {(b['rss_mb'] - a['rss_mb']) / millions:+.1f} MB, recovery+exclusion {(_rec_excl(b) - _rec_excl(a)) / millions:+.3f} s")
        a, b = runs[hi]["before"], runs[hi]["after"]
        print(f"  at {hi:,}: recovery+exclusion after/before = {_rec_excl(b) / _rec_excl(a):.2f}; "
              f"driver RSS {lo:,} -> {hi:,}: before {runs[lo]['before']['rss_mb']:.0f} -> {a['rss_mb']:.0f} MB, "
              f"after {runs[lo]['after']['rss_mb']:.0f} -> {b['rss_mb']:.0f} MB ({100 * (b['rss_mb'] / runs[lo]['after']['rss_mb'] - 1):+.0f}%)")
    for n, got in sorted(runs.items()):
        adopt = got["adoption"]
        print(f"  one-time indexing of an output written before indexes, {n:,} ids: {adopt['wall']:.1f} s, peak RSS {adopt['rss_mb']:.0f} MB")


def _rec_excl(r: dict) -> float:
    """Everything before labelling except listing: the recovery, and the manifest less its listing."""
    p = r["phases"]
    if "exclusion" in p:
        return p["recovery"] + p["exclusion"]
    return p["recovery"] + p["manifest"]  # before: listing 1,000 local files is part of it (~10 ms)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "batch-parse-corpus-scale",
                   help="folder for the S3 server's files, synthetic outputs and the old code (kept between runs)")
    p.add_argument("--listing-keys", type=int, nargs="*", default=[20_000, 200_000])
    p.add_argument("--committed", type=int, nargs="*", default=[1_000_000, 10_000_000])
    p.add_argument("--skip-listing", action="store_true")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    old = before_tree(args.work)
    listing = [] if args.skip_listing else listing_benchmark(args.work, args.listing_keys, old)
    runs = history_benchmark(args.work, args.committed, old) if args.committed else {}
    report(listing, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
