"""A whole training recipe run as one resumable job: face pool -> packed pools -> stages a, b, c, e2e.

Training the shipped weights takes hours of a small CPU, longer than any one sitting, so the
recipe is written to be started again and again: every step it takes leaves a mark in the
training home (`BATCH_PARSE_TRAIN_HOME`, default ~/.cache/batch-parse/train: outside any
checkout, so a fresh clone resumes it), and a restart skips what is done and resumes a stage
to the step. `scripts/train-background` starts it detached, one at a time (a lock), with its
log in HOME/train.log.

    HOME/facepool/          the teacher-labelled face pool (python -m batch_parse.train.facepool)
    HOME/pool/              that pool packed for training (batch_parse.train.pool)
    HOME/pool-points/       the same with the faces labelled by human points (for phases that read them)
    HOME/runs/<recipe>/     each stage's checkpoint, best weights, curve; <recipe>.safetensors
                            (fp16, the shippable file) and curves.png when all stages are done

Usage: python -m batch_parse.train.recipe [--recipe v4] [--home DIR] [--threads 1] [--jobs 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from batch_parse.model.registry import REGISTRY



def shared_data() -> Path:
    """The photos the face pool is built from: $BATCH_PARSE_SHARED/data, else ../shared/data beside the checkout."""
    env = os.environ.get("BATCH_PARSE_SHARED")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared"
    if not (root / "data" / "facepool").is_dir():
        raise ValueError(f"no face pool photos in {root / 'data' / 'facepool'}: set BATCH_PARSE_SHARED to the shared/ folder")
    return root / "data"


@dataclass(frozen=True)
class StageRun:
    """One phase of a recipe: a stage (train.STAGES) trained for a budget, under a name of its own
    when the stage is trained more than once, from the phases `start` names (train.DEFAULT_START)."""
    stage: str
    steps: int
    lr: float
    batch_size: int
    val_every: int
    name: str | None = None  # default the stage
    start: tuple[tuple[str, str], ...] | None = None  # (network, phase) pairs; default train.DEFAULT_START
    points: bool = False  # trains on the pool with the faces labelled by human points (pool.py, points.py)

    @property
    def phase(self) -> str:
        return self.name or self.stage


@dataclass(frozen=True)
class Recipe:
    name: str
    init: str  # registry name the first stages start from
    stages: tuple[StageRun, ...]
    zoom_min: float = 0.6
    turns: int = 1  # synthetic turned copies per near-frontal face in the pool (pool.py, synth_pose.py)


# v4: every stage gets at least 10x the samples stn-icnn/v2's fine-tuning gave it (model card:
# a 400x16 = 6,400 of v2's own, 21,000 counting v1's; b 150x32; c 220x32; e2e 160x16), from v3
# (which already has the skin class), rates of v2's fine-tuning.
# Then human points (points.py), which the ablation kept (model card: 800x16 at 1e-4 from stage a
# lifted CFP profile probes 59.1 -> 64.5 over the same steps without them): stage 1 fine-tuned on
# the pool with point faces, selected on the val persons' points as well as on the teacher's labels,
# and the localiser (trained on the dense stage 1) fine-tuned on what that stage 1 sees.
RECIPES = {
    "v4": Recipe("v4", "stn-icnn/v3", (
        StageRun("a", 4000, 3e-4, 16, 250),
        StageRun("c", 2200, 3e-4, 32, 200),
        # b from a localiser already at theta L1 0.0152 on the new stage 1: 3e-4 lifted it to 0.0293
        # in 150 steps (still 0.0264 at 300), so a fine-tuning rate.
        StageRun("b", 1500, 1e-4, 32, 150),
        StageRun("a", 800, 1e-4, 16, 100, name="a-points", start=(("stage1", "a"),), points=True),
        StageRun("b", 450, 5e-5, 32, 75, name="b-points", start=(("stage1", "a-points"), ("localiser", "b"))),
        StageRun("e2e", 1600, 2e-4, 16, 160, start=(("stage1", "b-points"), ("localiser", "b-points"), ("stage2", "c"))),
    )),
    # One H100/H200 in under 8 minutes (scripts/train-gpu), from a portable pool of ~3,000 faces
    # made from HOME/pool-points (so the points phases have point faces): larger batches, v4's
    # phases in v4's order, with about v4's samples per phase. Never run yet (no GPU lent).
    "gpu": Recipe("gpu", "stn-icnn/v3", (
        StageRun("a", 2000, 6e-4, 64, 250),
        StageRun("c", 1200, 6e-4, 64, 200),
        StageRun("b", 800, 2e-4, 64, 200),
        StageRun("a", 200, 2e-4, 64, 50, name="a-points", start=(("stage1", "a"),), points=True),
        StageRun("b", 250, 1e-4, 64, 50, name="b-points", start=(("stage1", "a-points"), ("localiser", "b"))),
        StageRun("e2e", 800, 4e-4, 32, 160, start=(("stage1", "b-points"), ("localiser", "b-points"), ("stage2", "c"))),
    )),
    # A few minutes end to end: checks the machinery (tests, a new machine), not for shipping.
    "smoke": Recipe("smoke", "stn-icnn/v3", (
        StageRun("a", 4, 3e-4, 4, 2), StageRun("c", 4, 3e-4, 4, 2), StageRun("b", 4, 3e-4, 4, 2),
        StageRun("a", 2, 1e-4, 4, 2, name="a-points", start=(("stage1", "a"),), points=True),
        StageRun("b", 2, 5e-5, 4, 2, name="b-points", start=(("stage1", "a-points"), ("localiser", "b"))),
        StageRun("e2e", 2, 2e-4, 4, 2, start=(("stage1", "b-points"), ("localiser", "b-points"), ("stage2", "c"))),
    )),
}


def default_home() -> Path:
    env = os.environ.get("BATCH_PARSE_TRAIN_HOME")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "batch-parse" / "train"


def log(msg: str) -> None:
    print(f"[recipe {time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_facepool(home: Path, facepool: Path | None, workers: int) -> Path:
    """The labelled face pool: given, or built once into HOME/facepool from ../shared/data."""
    if facepool is not None:
        return facepool
    dst = home / "facepool"
    if (dst / "summary.json").is_file():
        return dst
    from batch_parse.train import facepool as fp

    shared = shared_data()
    log(f"building the face pool into {dst} from {shared} (about 50 min on 2 idle cores; resumes if stopped)")
    utk = shared / "utkface"
    fp.build(shared / "facepool", dst, utk if utk.is_dir() else None, workers=workers)
    return dst


def run_recipe(recipe: Recipe, home: Path, threads: int = 1, device: str = "cpu", facepool: Path | None = None,
               pool: Path | None = None, workers: int = 1, precision: str = "auto", jobs: int = 1) -> Path:
    from batch_parse.train.curves import plot_curves
    from batch_parse.train.pool import pack
    from batch_parse.train.train import TrainOptions, export_weights, stage_done, train_stage

    home.mkdir(parents=True, exist_ok=True)
    pools = {False: pool, True: pool}  # a pool given is used by every phase
    if pool is None:
        # HOME/pool-points: the same faces and turns, and the faces labelled by human points only.
        # Packed only for a recipe with a phase that reads it; each is packed once.
        for points in sorted({s.points for s in recipe.stages}):
            pools[points] = pack([ensure_facepool(home, facepool, workers)], home / ("pool-points" if points else "pool"),
                                 turns=recipe.turns, points=points)
    run = home / "runs" / recipe.name
    init = str(REGISTRY[recipe.init])
    todo = []
    for s in recipe.stages:
        if stage_done(run, s.phase, s.steps):
            log(f"stage {s.phase}: done ({s.steps} steps), skipped")
        else:
            todo.append((s, TrainOptions(str(pools[s.points]), str(run), s.stage, s.steps, s.batch_size, val_every=s.val_every,
                                         threads=threads, lr=s.lr, zoom_min=recipe.zoom_min, init=init, device=device,
                                         precision=precision, name=s.name, start=s.start)))
    if jobs <= 1:
        for s, opts in todo:
            log(f"stage {s.phase}: {s.steps} steps x {s.batch_size}, lr {s.lr}")
            train_stage(opts)
    else:
        train_in_parallel(todo, run, jobs)
    out = export_weights(str(run), str(run / f"stn-icnn-{recipe.name}.safetensors"))
    plot_curves(run, run / "curves.png")
    (run / "done.json").write_text(json.dumps({"recipe": recipe.name, "weights": str(out), "finished": time.time()}))
    log(f"all stages done: {out}, curves in {run / 'curves.png'}")
    return out


def train_in_parallel(todo: list, run: Path, jobs: int) -> None:
    """Up to `jobs` stages at once, each in its own process, a stage as soon as what it starts from is done.

    Stages a and c are independent (c learns the parts on the labelled windows, not on a's output),
    so two cores train them side by side; b waits for a, e2e for b and c (TrainOptions.needs)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from batch_parse.train.train import stage_done, train_stage

    budget = {s.phase: s.steps for s, _ in todo}
    waiting, running = list(todo), {}

    def ready(opts) -> bool:
        return all(dep not in budget or stage_done(run, dep, budget[dep]) for dep in opts.needs)

    # spawn: a fresh interpreter per stage (torch's thread pools do not survive a fork).
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while waiting or running:
            for s, opts in [(s, o) for s, o in waiting if ready(o)][: jobs - len(running)]:
                log(f"stage {s.phase}: {s.steps} steps x {s.batch_size}, lr {s.lr} (in its own process)")
                running[pool.submit(train_stage, opts)] = s.phase
                waiting.remove((s, opts))
            if not running:  # nothing can start and nothing runs: a stage they start from finished short of its budget
                raise RuntimeError(f"stages {', '.join(s.phase for s, _ in waiting)} cannot start: what they start from is not done")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                future.result()  # a stage's error ends the recipe here, with its message
                log(f"stage {stage}: done")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_parse.train.recipe", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="v4")
    parser.add_argument("--home", type=Path, default=None, help="training home (default $BATCH_PARSE_TRAIN_HOME or ~/.cache/batch-parse/train)")
    parser.add_argument("--facepool", type=Path, default=None, help="an already built face pool (default: build one into HOME)")
    parser.add_argument("--pool", type=Path, default=None, help="an already packed pool (default: HOME/pool)")
    parser.add_argument("--portable", type=Path, default=None, help="a portable pool (pool.py --portable), unpacked into HOME/pool")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one leaves the other core of a 2-core machine free)")
    parser.add_argument("--workers", type=int, default=1, help="processes for the face pool build")
    parser.add_argument("--jobs", type=int, default=1,
                        help="stages trained at once, each in its own process with --threads threads (a and c are independent)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    home = args.home or default_home()
    home.mkdir(parents=True, exist_ok=True)
    # Held for the whole run and released by the kernel however the process ends: two recipes
    # on one home would write the same checkpoints.
    lock = open(home / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another training run holds {home / 'lock'}; not started")
        return 1
    try:
        if args.portable:
            from batch_parse.train.pool import unpack_portable

            args.pool = unpack_portable(args.portable, home / "pool")
        run_recipe(RECIPES[args.recipe], home, args.threads, args.device, args.facepool, args.pool,
                   args.workers, args.precision, args.jobs)
    except (ValueError, RuntimeError) as error:
        log(f"error: {error}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
