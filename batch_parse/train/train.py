"""Training STN-iCNN in the authors' stages: A (stage 1), B (localiser), C (parts), then end to end.

    a    stage-1 iCNN, cross-entropy on 128x128 inputs (skin included: faces whose labels
         have no skin, e.g. a 9-class student's self-labels, score background as "background
         or skin", since their background holds skin they never drew)
    b    localiser with A frozen, smooth L1 on part windows from the labels
    c    the four part iCNNs on windows from the labels (jittered)
    e2e  A and B frozen, C fine-tuned on the localiser's own windows, kept only if
         validation F1 after paste-back improves

Data comes from a training pool (batch_parse.train.pool: faces packed once into uint8 arrays read
by memory map); given a labelled folder instead, the stage packs one into RUN/pool first. A step
then costs the augmentation and the network only.

Each stage writes RUN/stage_<s>.safetensors (best by validation), RUN/stage_<s>.ckpt (resumable
state: model, optimiser, schedule, the data order and the random generator, every few minutes
and at each validation; our own file, read back with weights_only=True), RUN/curve_<s>.json
(the validation curve) and RUN/stage_<s>.json when the stage is done. A resumed stage gives the
same weights as one that was never stopped. Stages a and c are independent; b needs a; e2e needs
b and c. The schedule is a step budget per stage (Adam, cosine decay) instead of the authors'
epochs, so a CPU-only run can be planned.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from batch_parse.labels import BACKGROUND, COARSE_CLASSES, NUM_CLASSES, NUM_PART_CLASSES, PARTS, SKIN
from batch_parse.model.config import DEFAULT_CONFIG, ModelConfig
from batch_parse.model.expand import with_classes
from batch_parse.model.geometry import theta_to_windows, windows_to_theta
from batch_parse.model.parser import FaceParser
from batch_parse.model.stn_icnn import STNiCNN
from batch_parse.model.weights import load_weights, save_weights
from batch_parse.report.meter import Meter
from batch_parse.train import augment
from batch_parse.train.evaluate import evaluate, format_scores
from batch_parse.train.points import IGNORE, POINT_BASE, is_point_face, point_hits, point_loss, point_rows
from batch_parse.train.pool import PoolSplit, is_pool, open_pool, pack

STAGES = ("a", "b", "c", "e2e")
NETWORKS = ("stage1", "localiser", "stage2")  # the model's parts a stage trains or starts from
# What each stage's networks start from: (network, phase) pairs, a phase's best weights giving the
# network. A recipe may train one stage in several phases (a second stage a on human points,
# say) and say which phase the next starts from: TrainOptions.name and .start.
DEFAULT_START: dict[str, tuple[tuple[str, str], ...]] = {
    "a": (), "c": (), "b": (("stage1", "a"),), "e2e": (("stage1", "b"), ("localiser", "b"), ("stage2", "c"))}
LEARNING_RATES = {"a": 9e-4, "b": 8e-4, "c": 8e-4, "e2e": 2.5e-3}  # the authors' values
BATCH_SIZES = {"a": 16, "b": 32, "c": 32, "e2e": 16}


@dataclass
class TrainOptions:
    data: str
    run_dir: str
    stage: str
    steps: int
    batch_size: int | None = None
    canvas: int = 256  # training "photo" size
    val_every: int = 500
    val_images: int = 200
    threads: int | None = None
    limit: int | None = None  # cap on training images (quick runs)
    seed: int = 0
    zoom_min: float = 0.4  # smallest face size / photo size in the zoom-out augmentation
    init: str | None = None  # weights file to start from (fine-tuning), before the stage's own inputs
    lr: float | None = None  # default: the authors' rate for the stage
    extra: tuple[str, ...] = ()  # more folders whose train split is added (e.g. self-training labels)
    device: str = "cpu"
    precision: str = "auto"  # "bf16": autocast the forward pass; "auto": bf16 on CUDA and CPUs with native bf16
    checkpoint_minutes: float = 3.0  # resumable state written at least this often (and at every validation)
    channels_last: bool | None = None  # None: with bf16 (oneDNN's bf16 convolutions want NHWC; benchmarks/train_speed.py)
    name: str | None = None  # the phase's name, which names its files in RUN_DIR (stage_<name>.*); default the stage
    start: tuple[tuple[str, str], ...] | None = None  # (network, phase) pairs; default DEFAULT_START[stage]

    @property
    def phase(self) -> str:
        return self.name or self.stage

    @property
    def starts(self) -> tuple[tuple[str, str], ...]:
        return DEFAULT_START[self.stage] if self.start is None else self.start

    @property
    def needs(self) -> set[str]:
        """The phases whose weights this one starts from: they must be done first."""
        return {phase for _, phase in self.starts}


def log(msg: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def has_coarse(labels: torch.Tensor) -> torch.Tensor:
    """(N,S,S) -> (N,) bool: the label map draws the coarse classes (skin). A face's skin is never
    empty where its labeller knew the class, so a map without any is one whose labeller did not."""
    return ((labels >= NUM_PART_CLASSES) & (labels < NUM_CLASSES)).flatten(1).any(1)


class Batches:
    """Endless shuffled augmented batches from a pool's train split (+ per image: has skin labels).

    Its whole state (generator, epoch order, position) goes into the checkpoint, so a resumed
    stage draws the same batches it would have drawn."""

    def __init__(self, split: PoolSplit, batch_size: int, seed: int, zoom_min: float = 0.4, dense_only: bool = False):
        self.split, self.batch_size, self.zoom_min = split, batch_size, zoom_min
        # dense_only: leave out the faces labelled by human points only (points.py), for the stages
        # that learn windows and part shapes. A pool without them draws exactly as before.
        self.rows = (torch.from_numpy(np.flatnonzero([not is_point_face(n) for n in split.names])) if dense_only
                     else torch.arange(len(split)))
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(len(self.rows), generator=self.gen), 0

    def state(self) -> dict:
        return {"gen": self.gen.get_state(), "order": self.order.clone(), "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.order, self.pos = state["order"], int(state["pos"])

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.pos + self.batch_size > len(self.order):
            self.order, self.pos = torch.randperm(len(self.rows), generator=self.gen), 0
        idx = self.rows[self.order[self.pos : self.pos + self.batch_size]]
        self.pos += self.batch_size
        images, labels = self.split.rows(idx.numpy())
        labels = labels.long()
        coarse = has_coarse(labels)
        images, labels = augment.augment(images.float() / 255, labels, self.gen, self.zoom_min)
        return images, labels, coarse


def stage1_loss(logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; for images whose labels lack the coarse classes (labelled False), a
    background pixel is right if it is background or any coarse class (their log-probs summed)."""
    logp = logits.log_softmax(1)
    weak = point_loss(logp, target)  # faces labelled by human points only (points.py)
    dense = target.masked_fill(target >= POINT_BASE, IGNORE)
    if logits.shape[1] > NUM_PART_CLASSES and not bool(labelled.all()):
        merged = torch.logsumexp(logp[:, [BACKGROUND, *COARSE_CLASSES]], 1)
        unlabelled = ~labelled[:, None, None]
        logp = logp.clone()
        logp[:, BACKGROUND] = torch.where(unlabelled, merged, logp[:, BACKGROUND])
    if weak is None:
        return F.nll_loss(logp, dense, ignore_index=IGNORE)
    # Each face counts once: its labelled pixels' mean plus its points' mean (points.py), averaged
    # over the batch. (Faces of a pool without points all have every pixel labelled, so the line
    # above is the same mean.)
    known = (dense != IGNORE).flatten(1).sum(1)
    pixels = F.nll_loss(logp, dense, ignore_index=IGNORE, reduction="none").flatten(1).sum(1) / known.clamp(min=1)
    return (pixels + weak).mean()


def stage1_batch(images: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    # Same resize as geometry.stage1_input for a square photo (no letterbox needed).
    s = cfg.stage1_size
    return F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)


def stage_loss(model: STNiCNN, stage: str, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
               labelled: torch.Tensor | None = None) -> torch.Tensor:
    cfg = model.cfg
    x = stage1_batch(images, cfg)
    if stage == "a":
        target = F.interpolate(labels[:, None].float(), size=x.shape[-2:], mode="nearest")[:, 0].long()
        target[(target >= cfg.num_classes) & (target < POINT_BASE)] = BACKGROUND  # a 9-class model learns skin as background
        labelled = has_coarse(labels) if labelled is None else labelled
        return stage1_loss(model.stage1(x), target, labelled)
    canvas = images.shape[-1]
    windows = augment.target_windows(labels)
    if stage == "b":
        with torch.no_grad():
            probs = model.stage1(x).softmax(1)
        target = windows_to_theta(windows, [(canvas, canvas)] * len(images), cfg)
        # A part the face hides (the far eye and brow of a profile, 46% of v4's pool is turned) has no
        # window to learn: target_windows parks it mid-image, a target that jumps as the eye vanishes.
        present = augment.present_parts(labels)
        err = F.smooth_l1_loss(model.localise(probs), target, reduction="none").mean((-2, -1))
        return (err * present).sum() / present.sum().clamp(min=1)
    if stage == "c":
        windows = augment.jitter_windows(windows, gen)
    else:  # e2e: the localiser's own windows
        with torch.no_grad():
            theta = model.localise(model.stage1(x).softmax(1))
        windows = theta_to_windows(theta, [(canvas, canvas)] * len(images), cfg).float()
    crops, label_crops = augment.sample_windows(images, labels, windows, cfg.part_size)
    logits = model.parse_parts(crops)
    targets = augment.part_targets(label_crops)
    return sum(F.cross_entropy(y, t) for y, t in zip(logits, targets)) / len(PARTS)


def trainable(model: STNiCNN, stage: str) -> list[torch.nn.Parameter]:
    module = {"a": model.stage1, "b": model.localiser, "c": model.stage2, "e2e": model.stage2}[stage]
    return list(module.parameters())


def set_modes(model: STNiCNN, stage: str) -> None:
    """Frozen networks stay in eval mode so their BatchNorm statistics do not drift."""
    model.eval()
    {"a": model.stage1, "b": model.localiser, "c": model.stage2, "e2e": model.stage2}[stage].train()


def initial_model(opts: TrainOptions, run: Path) -> STNiCNN:
    """opts.init (or from scratch), then each network of opts.starts from that phase's best weights
    (by default b's stage 1 from a; e2e's stage 1 and localiser from b, its part networks from c)."""
    model = STNiCNN(DEFAULT_CONFIG)
    if opts.init:
        # A 9-class init (v2) grows the skin class without changing what it predicts (expand.py).
        model.load_state_dict(with_classes(load_weights(opts.init)[0], DEFAULT_CONFIG.num_classes).state_dict())
    sources: dict[str, STNiCNN] = {}
    for network, phase in opts.starts:
        path = run / f"stage_{phase}.safetensors"
        if not path.is_file():
            raise ValueError(f"stage {opts.phase} starts its {network} from phase {phase}, which has no weights in {path}")
        if phase not in sources:
            sources[phase] = load_weights(path)[0]
        getattr(model, network).load_state_dict(getattr(sources[phase], network).state_dict())
    return model


def validation_split(opts: "TrainOptions", pool: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first val_images labelled faces of the pool's val split, then (a pool packed with
    points) up to val_images of its faces labelled by human points: float 0..1 images, long labels."""
    val = open_pool(pool, "val")
    if len(val) == 0:
        # A small dataset of the user's with no val split still trains; its selection is then
        # on faces it learns from, which the log says.
        log(f"{pool}: the val split is empty; validating on the first train faces")
        val = open_pool(pool, "train")
    pointed = np.array([is_point_face(n) for n in val.names], bool)
    rows = np.concatenate([np.flatnonzero(~pointed)[: opts.val_images], np.flatnonzero(pointed)[: opts.val_images]])
    if len(rows) == 0:
        raise ValueError(f"{pool}: no faces to train or validate on")
    images, labels = val.rows(rows)
    return images.float() / 255, labels.long()


def validation_score(model: STNiCNN, stage: str, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, str, dict]:
    """(score, text, metrics); higher score is better. a: part IoU at 128 (with skin: mean of part
    and skin IoU; with faces labelled by human points: and the share of their point pixels that
    stage 1 puts in the point's part); b: -window error; c: part F1 on label windows; e2e: overall
    F1 of the whole model at the pool's resolution (the authors' selection). Only stage a reads
    the point faces."""
    model.eval()
    pointed = point_rows(labels)
    point_images, point_labels = (images[pointed], labels[pointed]) if stage == "a" and bool(pointed.any()) else (None, None)
    images, labels = images[~pointed], labels[~pointed]
    canvas = images.shape[-1]
    if stage == "e2e":
        samples = [(str(i), (im.permute(1, 2, 0) * 255).round().byte().numpy(), lab.byte().numpy())
                   for i, (im, lab) in enumerate(zip(images, labels))]
        parser = FaceParser(model, "val", "0" * 64, device=str(next(model.parameters()).device))
        _, scores = evaluate(lambda ims: [r.label_map for r in parser.parse(ims)], samples)
        return scores["overall"], format_scores(scores), {"overall F1": scores["overall"]}
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    with torch.no_grad():
        if stage == "c":
            crops, label_crops = augment.sample_windows(images, labels, augment.target_windows(labels.cpu()).to(device), model.cfg.part_size)
            both = total = 0
            for logits, target in zip(model.parse_parts(crops), augment.part_targets(label_crops.cpu())):
                pred = logits.argmax(1).cpu()
                both += ((pred == target) & (target > 0)).sum().item()
                total += (pred > 0).sum().item() + (target > 0).sum().item()
            f1 = 2 * both / max(1, total)
            return f1, f"part F1 on label windows {f1:.4f}", {"part F1": f1}
        probs = model.stage1(stage1_batch(images, model.cfg)).softmax(1)
        if stage == "a":
            target = F.interpolate(labels[:, None].float(), size=probs.shape[-2:], mode="nearest")[:, 0].long()
            pred = probs.argmax(1)
            # Part IoU as before skin existed (skin counts as background), so it compares with v2's.
            t_part, p_part = (target < NUM_PART_CLASSES) * target, (pred < NUM_PART_CLASSES) * pred
            fg = (t_part > 0) | (p_part > 0)
            iou = ((p_part == t_part) & fg).sum().item() / max(1, fg.sum().item())
            metrics = {"part IoU": iou}
            if model.cfg.num_classes > SKIN:
                # Selected on both: the new class must be learnt without losing the parts.
                t_skin, p_skin = target == SKIN, pred == SKIN
                metrics["skin IoU"] = (t_skin & p_skin).sum().item() / max(1, (t_skin | p_skin).sum().item())
            if point_images is not None:
                # And on people's points, where the teacher's labels are missing or wrong (profiles):
                # a phase that learns from points must be judged by points it did not learn from.
                point_probs = model.stage1(stage1_batch(point_images.to(device), model.cfg))
                pred = F.interpolate(point_probs.float(), size=point_labels.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
                hits, n = point_hits(pred, point_labels.to(device))
                metrics["point hits"] = hits / max(1, n)
            text = "stage-1 " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            return sum(metrics.values()) / len(metrics), text, metrics
        target = windows_to_theta(augment.target_windows(labels.cpu()), [(canvas, canvas)] * len(images), model.cfg).to(device)
        err = F.l1_loss(model.localise(probs), target).item()
        return -err, f"theta L1 {err:.5f}", {"theta L1": err}


def use_bf16(opts: "TrainOptions") -> bool:
    """Autocast to bfloat16 where it is native (CUDA, CPUs with AVX512-BF16 or AMX); else fp32."""
    if opts.precision == "fp32":
        return False
    if opts.precision == "bf16" or opts.device.startswith("cuda"):
        return True
    from batch_parse.model.parser import native_bf16_cpu

    return native_bf16_cpu()


def training_pool(opts: "TrainOptions", run: Path) -> Path:
    """DATA itself when it is a pool; else a pool packed once from DATA (+ extras) into RUN/pool."""
    if is_pool(opts.data):
        if opts.extra:
            raise ValueError(f"{opts.data} is a packed pool: pack the extra folders into it (python -m batch_parse.train.pool)")
        return Path(opts.data)
    pool = run / "pool"
    if not is_pool(pool):
        log(f"packing {opts.data} {' '.join(opts.extra)} into {pool} (once)")
    return pack([opts.data, *opts.extra], pool, canvas=opts.canvas, limit=opts.limit)


def _save_atomic(obj: dict, path: Path) -> None:
    """A checkpoint is replaced whole or not at all: a kill mid-write leaves the previous one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_stage(opts: TrainOptions) -> Path:
    if opts.stage not in STAGES:
        raise ValueError(f"unknown stage {opts.stage!r}: expected one of {', '.join(STAGES)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", opts.phase):
        raise ValueError(f"phase name {opts.phase!r}: letters, digits, '-', '_' and '.' only (it names files)")
    for network, phase in opts.starts:
        if network not in NETWORKS or phase == opts.phase:
            raise ValueError(f"stage {opts.phase} starts its {network!r} from {phase!r}: expected one of "
                             f"{', '.join(NETWORKS)} from another phase")
    run = Path(opts.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    # Two processes on one stage would write the same checkpoint; the kernel drops the lock
    # however the holder ends, so a killed run never blocks its own resumption.
    with open(run / f"stage_{opts.phase}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"stage {opts.phase} of {run} is being trained by another process") from None
        return _train_stage(opts, run)


def _train_stage(opts: TrainOptions, run: Path) -> Path:
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    device = torch.device(opts.device)
    pool = training_pool(opts, run)
    model = initial_model(opts, run).to(device)
    bf16 = use_bf16(opts)
    channels_last = bf16 if opts.channels_last is None else opts.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = trainable(model, opts.stage)
    optimizer = torch.optim.Adam(params, lr=opts.lr or LEARNING_RATES[opts.stage])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, opts.steps) / opts.steps)))
    ckpt_path, best_path = run / f"stage_{opts.phase}.ckpt", run / f"stage_{opts.phase}.safetensors"
    curve_path = run / f"curve_{opts.phase}.json"
    batch_size = opts.batch_size or BATCH_SIZES[opts.stage]
    batches = Batches(open_pool(pool, "train"), batch_size, opts.seed, opts.zoom_min, dense_only=opts.stage != "a")
    val_images, val_labels = validation_split(opts, pool)
    step, best, curve = 0, -math.inf, []
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        batches.load_state(state["data"])
        step, best, curve = state["step"], state["best"], state["curve"]
        log(f"stage {opts.phase}: resumed at step {step} (best {best:.4f})")
    if step == 0:
        # The curve starts where the stage starts (its init), so a flat or falling curve shows.
        score, text, metrics = validation_score(model, opts.stage, val_images, val_labels)
        curve.append({"step": 0, "samples": 0, "score": score, "text": text, "metrics": metrics})
        log(f"stage {opts.phase}: before training: {text}")
        # The stage's starting point competes too: a fine-tuning that never beats it keeps it (the
        # authors' selection for e2e, and as much for the others: v4's stage b, from a localiser
        # already at theta L1 0.0152, stood at 0.0293 after 150 steps of its first, high rate).
        best = score
        save_weights(model, best_path, info={"stage": opts.stage, "phase": opts.phase, "step": 0, "val": text})

    def checkpoint() -> None:
        _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                      "data": batches.state(), "step": step, "best": best, "curve": curve}, ckpt_path)
        curve_path.write_text(json.dumps({"stage": opts.stage, "phase": opts.phase, "batch_size": batch_size, "steps": opts.steps, "curve": curve}, indent=1))

    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    log(f"stage {opts.phase}: {len(batches.split)} training faces, {opts.steps} steps of {batch_size} on {device}"
        f"{' (bf16 autocast)' if bf16 else ''}{' channels-last' if channels_last else ''}, pool {pool}")
    t0, last_ckpt, seen, running = time.time(), time.monotonic(), 0, None
    # A bar on a terminal (steps, smoothed rate, ETA); a log keeps its every-25-steps lines only.
    meter = Meter(opts.steps, f"stage {opts.phase}:", unit="steps", log_interval=float("inf"))
    meter.set(step)

    def note(msg: str) -> None:
        meter.write(f"[train {time.strftime('%H:%M:%S')}] {msg}") if meter.tty else log(msg)

    while step < opts.steps:
        set_modes(model, opts.stage)
        imgs, labs, labelled = batches.next()
        if channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        with autocast():
            loss = stage_loss(model, opts.stage, imgs.to(device), labs.to(device), batches.gen, labelled.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()
        schedule.step()
        step, seen = step + 1, seen + len(imgs)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        meter.set(step, f"loss {running:.4f}")
        if step % 25 == 0:
            note(f"stage {opts.phase} step {step}/{opts.steps} loss {running:.4f} lr {schedule.get_last_lr()[0]:.2e} {seen / (time.time() - t0):.1f} img/s")
        if step % opts.val_every == 0 or step == opts.steps:
            score, text, metrics = validation_score(model, opts.stage, val_images, val_labels)
            curve.append({"step": step, "samples": step * batch_size, "score": score, "text": text, "metrics": metrics})
            improved = score > best
            if improved:
                best = score
                save_weights(model, best_path, info={"stage": opts.stage, "phase": opts.phase, "step": step, "val": text})
            note(f"stage {opts.phase} step {step}: val {text}{' (best, saved)' if improved else ''}")
            checkpoint()
            last_ckpt = time.monotonic()
        elif time.monotonic() - last_ckpt > opts.checkpoint_minutes * 60:
            checkpoint()
            last_ckpt = time.monotonic()
    meter.bar.close()  # its figures are in the lines above: no closing line
    if not ckpt_path.is_file() or step == 0:
        checkpoint()
    (run / f"stage_{opts.phase}.json").write_text(json.dumps({"steps": step, "best": best}))
    return best_path


def stage_done(run_dir: str | Path, stage: str, steps: int) -> bool:
    """The stage finished a budget of at least `steps` (a larger budget resumes it)."""
    path = Path(run_dir) / f"stage_{stage}.json"
    return path.is_file() and json.loads(path.read_text()).get("steps", 0) >= steps


def export_weights(run_dir: str, out: str, fp16: bool = True, stage: str = "e2e") -> Path:
    """A stage's best model of a run (default the final, e2e) as a small shippable file.

    stage="b": a run that stopped after the localiser (stn-icnn/v3: new A and B, C as initialised)."""
    run = Path(run_dir)
    src = run / f"stage_{stage}.safetensors"
    model, info = load_weights(src)
    save_weights(model, out, dtype=torch.float16 if fp16 else torch.float32, info=info)
    return Path(out)
