"""Training speed per stage: samples/s of a step as training was run before the packed pool and now.

"before": a stage starts by decoding its folder (JPEG + one PNG per Helen label, squared,
resized) into memory, then steps in float32. "after": the stage opens the packed pool (memory
map) and steps with whatever this machine does best (bf16 autocast where the CPU has native
bf16; --channels-last tried too). Each step is split into data (rows + augmentation) and network
(forward, backward, optimiser). Configurations are interleaved round by round, so a busy machine
slows them alike; compare ratios within one run, and name the CPU beside the figures.

Usage: python benchmarks/train_speed.py FACEPOOL POOL [--steps 6] [--rounds 2] [--threads 1] [--stages a,b,c,e2e]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import torch


def cpu_flags() -> str:
    flags = set(re.findall(r"avx512_bf16|amx_bf16|avx512f|avx2", Path("/proc/cpuinfo").read_text()))
    return ", ".join(sorted(flags)) or "unknown"


def time_steps(stage: str, pool: Path, steps: int, bf16: bool, channels_last: bool, init: str) -> tuple[float, float, int]:
    """(data s/step, network s/step, batch) for `steps` steps after one warm-up step."""
    from batch_parse.model.weights import load_weights
    from batch_parse.train.pool import open_pool
    from batch_parse.train.train import BATCH_SIZES, Batches, set_modes, stage_loss, trainable

    model, _ = load_weights(init)
    model = model.float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(trainable(model, stage), lr=1e-5)
    batch = BATCH_SIZES[stage]
    batches = Batches(open_pool(pool, "train"), batch, seed=0)
    data_t, net_t = [], []
    for i in range(steps + 1):
        set_modes(model, stage)
        t0 = time.perf_counter()
        imgs, labs, labelled = batches.next()
        if channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = stage_loss(model, stage, imgs, labs, batches.gen, labelled)
        opt.zero_grad()
        loss.float().backward()
        opt.step()
        t2 = time.perf_counter()
        if i:  # the first step pays one-off allocations
            data_t.append(t1 - t0)
            net_t.append(t2 - t1)
    return statistics.median(data_t), statistics.median(net_t), batch


def decode_startup(facepool: Path, faces: int) -> float:
    """Seconds per face to decode a Helen-layout folder into training tensors (what every stage start paid)."""
    from batch_parse.train.datasets import open_dataset
    from batch_parse.train.pool import square_resize

    ds = open_dataset(facepool, "train")
    n = min(faces, len(ds))
    t0 = time.perf_counter()
    for i in range(n):
        _, image, label = ds[i]
        square_resize(image, label, 256)
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("facepool", type=Path)
    parser.add_argument("pool", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stages", default="a,b,c,e2e")
    parser.add_argument("--init", default="batch_parse/model/weights/stn-icnn-v3.safetensors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from batch_parse.model.parser import native_bf16_cpu
    from batch_parse.train.pool import open_pool

    native = native_bf16_cpu()
    print(f"CPU flags: {cpu_flags()}; native bf16: {native}; torch {torch.__version__}; {args.threads} thread(s)")
    per_face = decode_startup(args.facepool, 200)
    n_train = len(open_pool(args.pool, "train"))
    t0 = time.perf_counter()
    open_pool(args.pool, "train").rows(torch.randperm(n_train)[:16].numpy())
    pool_open = time.perf_counter() - t0
    print(f"stage start: decoding the folder {per_face * 1000:.1f} ms/face -> {per_face * n_train:.0f} s for {n_train} train faces "
          f"(+ the val faces at every validation); packed pool: {pool_open:.2f} s to open and read a batch")
    configs = {"fp32": (False, False), "fp32 channels-last": (False, True)}
    if native:
        configs.update({"bf16": (True, False), "bf16 channels-last": (True, True)})
    for stage in args.stages.split(","):
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
        batch = 0
        for _ in range(args.rounds):
            for name, (bf16, cl) in configs.items():
                d, n, batch = time_steps(stage, args.pool, args.steps, bf16, cl, args.init)
                results[name].append((d, n))
        base = statistics.median(d + n for d, n in results["fp32"])
        for name, runs in results.items():
            d = statistics.median(r[0] for r in runs)
            n = statistics.median(r[1] for r in runs)
            print(f"stage {stage:3} {name:20} {batch / (d + n):6.1f} samples/s  (data {d * 1000:5.0f} ms + network {n * 1000:6.0f} ms a step "
                  f"of {batch}; {base / (d + n):.2f}x fp32)")


if __name__ == "__main__":
    main()
