"""Model verbs of `batch-parse`: train, eval, convert, export-onnx."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import click

from batch_parse.cli.policy import policy_from, policy_options
from batch_parse.cli.redact import echo
from batch_parse.faces.policy import WHOLE_IMAGE, InferencePolicy
from batch_parse.pipeline.options import DEFAULT_MAX_PIXELS, DEFAULT_MODEL

DEFAULT_STEPS = {"a": 900, "b": 400, "c": 450, "e2e": 160}  # what stn-icnn/v1 was trained with from scratch on 2 CPU cores


@click.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--stage", type=click.Choice(["a", "b", "c", "e2e", "all"]), default="all", show_default=True,
              help="a: stage 1, b: localiser, c: part nets, e2e: end-to-end fine-tuning; all: a, b, c, e2e in turn.")
@click.option("--steps", type=click.IntRange(min=1), help="Optimiser steps for the stage.  [default: a 900, b 400, c 450, e2e 160]")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per step.  [default: the authors' per stage]")
@click.option("--val-every", type=click.IntRange(min=1), default=300, show_default=True, help="Steps between validations.")
@click.option("--val-images", type=click.IntRange(min=1), default=200, show_default=True, help="Validation images used.")
@click.option("--threads", type=click.IntRange(min=1), help="Torch CPU threads.  [default: all cores]")
@click.option("--limit", type=click.IntRange(min=1), help="Use at most this many training images.")
@click.option("--lr", type=float, help="Learning rate.  [default: the authors' per stage]")
@click.option("--zoom-min", type=click.FloatRange(0.05, 0.85), default=0.4, show_default=True,
              help="Smallest face size / photo size in the zoom-out augmentation.")
@click.option("--init", "init_path", type=click.Path(exists=True, dir_okay=False), help="Weights to start from (fine-tuning).")
@click.option("--export", "export_path", type=click.Path(dir_okay=False), help="After training, write the last stage's best weights here (fp16).")
@click.option("--extra", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Another Helen-layout folder whose train split is added (e.g. self-training labels); repeatable.")
@click.option("--device", default="cpu", show_default=True, help="Torch device: cpu, cuda, cuda:1 ...")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="bf16 autocasts the forward pass; auto = bf16 on CUDA and on CPUs with native bf16, else fp32.")
@click.option("--checkpoint-minutes", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Write the resumable state at least this often (and at every validation).")
def train(data, run_dir, stage, steps, batch_size, val_every, val_images, threads, limit, lr, zoom_min, init_path, export_path,
          extra, device, precision, checkpoint_minutes) -> None:
    """Train STN-iCNN on a labelled dataset folder or a packed pool.

    DATA is a Helen- or CelebAMask-HQ-layout folder (a face-pool folder is one), packed once into
    RUN_DIR/pool, or a pool packed by `python -m batch_parse.train.pool`; validation uses its val
    split. RUN_DIR keeps checkpoints: a rerun (after a crash, a kill, a reboot) resumes to the step.
    The whole recipe in the background: scripts/train-background.
    """
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise click.UsageError(f"--device {device}: this torch has no CUDA device ({torch.__version__})")
    from batch_parse.train.train import TrainOptions, export_weights, train_stage

    for name in (["a", "b", "c", "e2e"] if stage == "all" else [stage]):
        best = train_stage(TrainOptions(data, run_dir, name, steps or DEFAULT_STEPS[name], batch_size, val_every=val_every,
                                        val_images=val_images, threads=threads, limit=limit, lr=lr, zoom_min=zoom_min,
                                        init=init_path, extra=tuple(extra), device=device, precision=precision,
                                        checkpoint_minutes=checkpoint_minutes))
        echo(f"stage {name}: best weights in {best}")
    if export_path:
        echo(f"exported {export_weights(run_dir, export_path, stage=name)}")


@click.command(name="eval")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Registry name or .safetensors path.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Score only the first N images of the split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), show_default="cuda when available", help="Model device.")
@click.option("--face-fraction", type=click.FloatRange(0.05, 1.0), default=1.0, show_default=True,
              help="Place each image to span this fraction of a cluttered canvas (scores wide shots).")
# eval scores tight crops by default: each image parsed whole, as its labels were drawn.
@policy_options(InferencePolicy(faces=WHOLE_IMAGE))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the scores and histogram as JSON.")
def evaluate(data, model, split, limit, batch_size, device, face_fraction, json_path, **policy_flags) -> None:
    """Score a model (F1 per part) on a labelled dataset.

    Helen convention: one confusion histogram over the split at original resolution. On a
    face-pool folder (python -m batch_parse.train.facepool) it scores the aligned faces per source
    and pose, against the teacher and against the human points (probe hits, model vs teacher).
    With --faces largest or all, faces are detected, aligned and parsed first, as `run` does
    (same flags, same defaults), and the union of the faces' label maps is scored.
    """
    policy = policy_from(policy_flags)
    if (Path(data) / "faces.jsonl").is_file():
        return _evaluate_facepool(data, model, split, limit, batch_size, device, json_path)
    from batch_parse.faces import load_detector
    from batch_parse.model import load_parser
    from batch_parse.train.datasets import open_dataset
    from batch_parse.train.evaluate import photo_label_maps
    from batch_parse.train.evaluate import evaluate as run_eval
    from batch_parse.train.framing import reframe

    parser = load_parser(model, device=device)
    detector = load_detector(policy.detector, device=device) if policy.detects else None
    ds = open_dataset(data, split)
    n = len(ds) if limit is None else min(limit, len(ds))
    samples = reframe((ds[i] for i in range(n)), face_fraction)
    hist, scores = run_eval(lambda ims: photo_label_maps(parser, detector, ims, policy), samples, batch_size)
    framing = "" if face_fraction == 1 else f", framed at {face_fraction:g} of a cluttered canvas"
    faces = policy.faces
    echo(f"model {parser.model_version} on {data} [{split}], {n} images{framing}, faces: {faces}, F1 (%):")
    for group, value in scores.items():
        echo(f"  {group:<12} {100 * value:6.2f}")
    if json_path:
        Path(json_path).write_text(json.dumps({"model": parser.model_version, "data": str(data), "split": split, "images": n,
                                               "face_fraction": face_fraction, "faces": faces, "policy": policy.metadata(),
                                               "f1": scores, "confusion": hist.tolist()}, indent=1))


def _evaluate_facepool(data, model, split, limit, batch_size, device, json_path) -> None:
    from batch_parse.model import load_parser
    from batch_parse.train.probes import format_scores, score_facepool

    parser = load_parser(model, device=device)
    scores = score_facepool(lambda ims: [r.label_map for r in parser.parse(ims)], data, split, limit, batch_size)
    echo(f"model {parser.model_version} on the aligned faces of {data} [{split}]:")
    echo(format_scores(scores))
    if json_path:
        Path(json_path).write_text(json.dumps({"model": parser.model_version, "data": str(data), "split": split,
                                               **scores.to_json()}, indent=1))


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output .safetensors file.")
@click.option("--fp16", is_flag=True, help="Store float16 (half the size).")
def convert(checkpoints, out, fp16) -> None:
    """Convert the authors' .pth.tar checkpoints to safetensors.

    Give the A+B and C files, or one end-to-end file; the result runs with --model PATH.
    """
    import torch

    from batch_parse.model.convert import convert_checkpoints

    path = convert_checkpoints(list(checkpoints), out, dtype=torch.float16 if fp16 else torch.float32)
    echo(f"wrote {path} (load it with --model {path})")


@click.command(name="export-onnx")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Registry name or .safetensors path.")
@click.option("--detector/--no-detector", default=True, show_default=True, help="Also export MTCNN's three networks.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True, help="ONNX opset.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the export in onnxruntime on the demo photos and compare its labels with torch's.")
def export_onnx(out_dir, model, detector, opset, check) -> None:
    """Write the detector and parser networks as ONNX graphs into OUT_DIR, with a manifest.

    Six graphs (stage1, localiser, parts, mtcnn_pnet/rnet/onet) and batch-parse-onnx.json: every
    input and output, the model config, each file's sha256 and licences. Run them with
    `batch_parse.onnx.load_onnx(OUT_DIR)`, or in any ONNX runtime around your own glue.
    """
    from batch_parse.model.registry import weights_problem

    if problem := weights_problem(model):
        raise click.BadParameter(problem, param_hint="--model")
    for module in ("onnx",) + (("onnxruntime",) if check else ()):
        if importlib.util.find_spec(module) is None:
            raise click.ClickException(f"{module} is not installed; install it with: pip install 'batch-parse[onnx]'")
    from batch_parse.onnx.export import export_onnx as export

    manifest = export(out_dir, model=model, detector=detector, opset=opset)
    sizes = sum(f.stat().st_size for f in Path(out_dir).glob("*.onnx"))
    echo(f"wrote {manifest} and {len(json.loads(manifest.read_text())['graphs'])} graphs ({sizes / 1e6:.0f} MB)")
    if check:
        from batch_parse.demo import demo_images
        from batch_parse.onnx.runtime import compare_with_torch
        from batch_parse.pipeline.decode import decode_image

        images = [decode_image(p.read_bytes(), DEFAULT_MAX_PIXELS) for p in demo_images()]
        result = compare_with_torch(out_dir, images, model)
        echo(f"onnxruntime check on {len(images)} demo photos: {result['faces_onnx']} faces found "
             f"(torch {result['faces_torch']}), {100 * result['pixel_agreement']:.3f}% of label pixels as torch's")


COMMANDS = [train, evaluate, convert, export_onnx]
