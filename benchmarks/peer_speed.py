"""Ours (face-first and whole-image) vs the real BiSeNet of face-parsing.PyTorch, on real photos, in one run.

    python benchmarks/peer_speed.py                                # 48 photos a set, threads 1 and 2, 2 rounds
    python benchmarks/peer_speed.py --images 16 --rounds 1 --threads 1   # a quick look
    python benchmarks/peer_speed.py --agreement --images 100       # also: our labels vs all-fp32 labels
    python benchmarks/peer_speed.py --onnx                         # also: ours through onnxruntime

Photo sets (the first --images of each, sorted by path): `in-the-wild` = facepool/caltech_webfaces
(several faces a photo, 10 px to full-frame), `profiles` = facepool/cfp */profile/ (turned heads),
`tight-crops` = utkface (200x200 aligned crops). Photos are decoded once up front (decode is the
same cost for every parser and is not measured).

What runs, each on the same chunks of --batch-size photos:
  face-first   the job's own stage code: stages.FaceParseActor (MTCNN detect, align, parse every
               face, map back, face rows) then stages.encode_rows (PNG label map, 6 JPEG crops a
               face, the Arrow table): what `batch-parse run` does between decode and write.
  whole-image  the same with --faces whole-image (each photo parsed as one face, no detector).
  BiSeNet      face-parsing.PyTorch's BiSeNet (19 classes, random weights: speed does not depend on
               them), run as its users do: resize to 512x512 (bilinear), ImageNet normalisation,
               net(x)[0].argmax(1), label map resized back (nearest), then PNG-encoded like ours.
               Its code is imported at run time from ../shared/peers/bisenet (never copied here),
               at each --bisenet-batches size; the best is the baseline.

On a shared machine the load drifts over minutes, so the three run interleaved chunk by chunk
(their order rotating), for --rounds rounds, at each --threads count; rates are photos (or faces)
over summed wall seconds, and ratios compare sums taken side by side. The load average is printed.
Per-stage shares come from the parser's own timings (FaceParser.parse_faces(timings=)).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import types
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from batch_parse.faces.policy import InferencePolicy  # noqa: E402
from batch_parse.model.weights import file_sha256, resolve  # noqa: E402
from batch_parse.pipeline import stages  # noqa: E402
from batch_parse.pipeline.decode import decode_image  # noqa: E402
from batch_parse.output.schema import output_schema  # noqa: E402
from batch_parse.storage.manifest import object_id  # noqa: E402

MODEL = "stn-icnn/default"
SETS = ("in-the-wild", "profiles", "tight-crops")
# The targets on a 2-core CPU: face-first vs BiSeNet on in-the-wild photos and profiles,
# whole-image vs BiSeNet on tight crops.
TARGETS = {("face-first", "in-the-wild"): 3.0, ("face-first", "profiles"): 3.0, ("whole-image", "tight-crops"): 4.0}
BISENET_SIZE = 512
BISENET_CLASSES = 19
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Stage names in print order; "paste-back" is parse minus its timed parts, "rows" the actor's
# own Python (face rows) around detect and parse_faces.
OUR_STAGES = ("detect", "align", "stage1", "localiser", "crops", "stage2", "paste-back", "map-back", "rows", "encode")
BISENET_STAGES = ("resize+normalise", "network", "argmax+resize back+png")


def fail(message: str) -> None:
    raise SystemExit(f"error: {message}")


# ---- inputs ----


def photo_sets(limit: int, wanted: list[str]) -> dict[str, list[Path]]:
    from corpus import shared_dir, utkface_dir

    pool = shared_dir() / "data" / "facepool"
    globs = {
        "in-the-wild": (pool / "caltech_webfaces" / "images", "*.jpg"),
        "profiles": (pool / "cfp" / "images", "*/profile/*.jpg"),
        "tight-crops": (utkface_dir(), "*.jpg"),
    }
    out = {}
    for name in wanted:
        folder, pattern = globs[name]
        files = sorted(folder.glob(pattern))[:limit]
        if not files:
            fail(f"no photos for set {name} in {folder}")
        out[name] = files
    return out


def image_batch(files: list[Path], images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The rows fetch_and_decode hands the model stage: manifest columns plus the decoded image."""
    keys = [f.name for f in files]
    column = np.empty(len(images), dtype=object)
    column[:] = images
    return {
        "id": np.array([object_id(k) for k in keys], np.int64),
        "key": np.array(keys, dtype=object),
        "size": np.array([f.stat().st_size for f in files], np.int64),
        "etag": np.array([""] * len(keys), dtype=object),
        "image": column,
        "width": np.array([im.shape[1] for im in images], np.int32),
        "height": np.array([im.shape[0] for im in images], np.int32),
        "error_code": np.array([""] * len(keys), dtype=object),
        "error": np.array([""] * len(keys), dtype=object),
    }


# ---- BiSeNet, from ../shared/peers/bisenet ----


def load_bisenet() -> torch.nn.Module:
    from corpus import shared_dir

    try:
        peer = shared_dir() / "peers" / "bisenet"
    except FileNotFoundError as exc:
        fail(str(exc))
    if not (peer / "model.py").is_file() or not (peer / "resnet.py").is_file():
        fail(f"BiSeNet peer code not found: {peer} must hold face-parsing.PyTorch's model.py and resnet.py")
    # Its model.py imports torchvision (unused for inference) and resnet.py downloads ImageNet
    # weights in init_weight: an empty module and a no-op stand in (the peer folder's README).
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    sys.path.insert(0, str(peer))
    try:
        import resnet  # type: ignore[import-not-found]

        resnet.Resnet18.init_weight = lambda self: None
        import model as bisenet_model  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(peer))
    torch.manual_seed(0)
    return bisenet_model.BiSeNet(n_classes=BISENET_CLASSES).eval()


class BiSeNetRunner:
    def __init__(self, net: torch.nn.Module, batch: int):
        self.net, self.batch = net, batch
        self.phases: Counter = Counter()
        self.faces = 0  # BiSeNet finds no faces: it labels the whole photo

    def stage_seconds(self) -> dict[str, float]:
        return {name: self.phases.get(name, 0.0) for name in BISENET_STAGES}

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> None:
        for start in range(0, len(images), self.batch):
            chunk = images[start : start + self.batch]
            t0 = time.perf_counter()
            x = np.stack([np.asarray(Image.fromarray(im).resize((BISENET_SIZE, BISENET_SIZE), Image.BILINEAR)) for im in chunk])
            x = torch.from_numpy((x.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD).permute(0, 3, 1, 2)
            t1 = time.perf_counter()
            out = self.net(x)[0]
            t2 = time.perf_counter()
            labels = out.argmax(1).to(torch.uint8).numpy()
            for im, lab in zip(chunk, labels):
                back = Image.fromarray(lab).resize((im.shape[1], im.shape[0]), Image.NEAREST)
                back.save(io.BytesIO(), format="PNG", compress_level=1)
            t3 = time.perf_counter()
            self.phases.update({BISENET_STAGES[0]: t1 - t0, BISENET_STAGES[1]: t2 - t1, BISENET_STAGES[2]: t3 - t2})


# ---- ours: the job's stage code ----


class OursRunner:
    """stages.FaceParseActor + stages.encode_rows on one batch, with per-stage seconds."""

    def __init__(self, faces: str, precision: str, schema, model_version: str, onnx_dir: Path | None = None):
        from batch_parse.model import load_parser

        self.actor = stages.FaceParseActor(MODEL, "cpu", torch.get_num_threads(), policy=InferencePolicy(faces=faces))
        self.actor.parser = load_parser(MODEL, device="cpu", precision=precision)
        if onnx_dir is not None:  # the exported graphs in onnxruntime, behind the same glue
            from batch_parse.onnx import load_onnx

            detector, self.actor.parser = load_onnx(onnx_dir)
            if self.actor.detector is not None:
                self.actor.detector = detector
        self.schema, self.model_version = schema, model_version
        self.phases: Counter = Counter()
        self.faces = 0
        detector, parser = self.actor.detector, self.actor.parser
        if detector is not None:
            detect = detector.detect

            def timed_detect(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return detect(*args, **kwargs)
                finally:
                    self.phases["detect"] += time.perf_counter() - t

            detector.detect = timed_detect
        parse_faces = parser.parse_faces

        def timed_parse_faces(images, faces=None, **kwargs):
            return parse_faces(images, faces, timings=self.phases, **kwargs)

        parser.parse_faces = timed_parse_faces

    def __call__(self, batch: dict[str, np.ndarray]) -> None:
        t0 = time.perf_counter()
        rows = self.actor(batch)
        t1 = time.perf_counter()
        stages.encode_rows(rows, self.schema, self.model_version, "jpeg", 90)
        t2 = time.perf_counter()
        self.faces += int((rows["status"] == "ok").sum())
        self.phases["actor"] += t1 - t0
        self.phases["encode"] += t2 - t1

    def stage_seconds(self) -> dict[str, float]:
        p = self.phases
        parts = {name: p.get(f"parse.{name}", 0.0) for name in ("stage1", "localiser", "crops", "stage2")}
        out = {"detect": p.get("detect", 0.0), "align": p.get("align", 0.0), **parts,
               "paste-back": p.get("parse", 0.0) - sum(parts.values()), "map-back": p.get("map_back", 0.0)}
        out["rows"] = p.get("actor", 0.0) - out["detect"] - p.get("align", 0.0) - p.get("parse", 0.0) - out["map-back"]
        out["encode"] = p.get("encode", 0.0)
        return out


def shares(seconds: dict[str, float], names) -> str:
    total = sum(seconds.values()) or 1.0
    return "  ".join(f"{n} {100 * seconds.get(n, 0.0) / total:.0f}%" for n in names)


# ---- arithmetic: why a ratio can or cannot be reached ----


def gigaflops(run, *inputs) -> float:
    """FLOPs (2 x multiply-adds of convolutions and matmuls, torch's own counter) of one call, in G."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        run(*inputs)
    return counter.get_total_flops() / 1e9


def arithmetic(parser, bisenet: torch.nn.Module) -> tuple[dict[str, float], float]:
    """Our parser's GFLOPs per face by stage (the network the job runs), and BiSeNet's per photo."""
    net, cfg = parser._net, parser.cfg
    s1, ps = cfg.stage1_size, cfg.part_size
    ours = {"stage1": gigaflops(net.stage1, torch.rand(1, 3, s1, s1)),
            "localiser": gigaflops(net.localise, torch.rand(1, cfg.num_classes, s1, s1).softmax(1)),
            "stage2": gigaflops(net.parse_parts, torch.rand(1, cfg.num_parts, 3, ps, ps))}
    return ours, gigaflops(lambda x: bisenet(x)[0], torch.rand(1, 3, BISENET_SIZE, BISENET_SIZE))


def report_arithmetic(ours: dict[str, float], theirs: float, files, faces, n_rounds: int) -> None:
    per_face = sum(ours.values())
    print(f"arithmetic: ours {per_face:.2f} GFLOP a face (" + ", ".join(f"{k} {v:.2f}" for k, v in ours.items())
          + f"), BiSeNet {theirs:.2f} GFLOP a photo. At BiSeNet's FLOP/s, with no detector, face-first could reach at most:")
    for name, fs in files.items():
        per_photo = faces["face-first", name] / (len(fs) * n_rounds)
        ceiling = theirs / (per_face * per_photo) if per_photo else float("inf")
        print(f"  {name:<12} {per_photo:.2f} faces a photo -> {ceiling:.2f}x (whole-image: {theirs / per_face:.2f}x)")


# ---- label agreement ----


def agreement(sets: dict[str, list[np.ndarray]], precision: str) -> None:
    from batch_parse.faces import load_detector
    from batch_parse.model import load_parser

    ours, reference = load_parser(MODEL, device="cpu", precision=precision), load_parser(MODEL, device="cpu", precision="fp32")
    detector = load_detector("mtcnn", device="cpu")
    print(f"\nlabel agreement, precision {ours.precision} vs fp32 (the labels of main), same detections:")
    for name, images in sets.items():
        found = detector.detect(images)
        for mode, faces in (("face-first", found), ("whole-image", None)):
            same = total = part_same = part_total = n = 0
            for a, b in zip(ours.parse_faces(images, faces), reference.parse_faces(images, faces)):
                x, y = a.label_map, b.label_map
                same += int((x == y).sum())
                total += x.size
                parts = (x > 0) | (y > 0)
                part_same += int((parts & (x == y)).sum())
                part_total += int(parts.sum())
                n += 1
            print(f"  {name:<12} {mode:<12} {n:>4} faces: {100 * same / max(total, 1):.3f}% of pixels agree, "
                  f"{100 * part_same / max(part_total, 1):.2f}% of face-part pixels")


# ---- the run ----


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=48, help="photos per set (default 48)")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    p.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated (default 1,2)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per thread count (default 2)")
    p.add_argument("--batch-size", type=int, default=16, help="photos per model call, as the job's --batch-size (default 16)")
    p.add_argument("--bisenet-batches", default="1", help="BiSeNet batch sizes to try; the best is the baseline (default 1)")
    p.add_argument("--precision", default="auto", help="our parser's precision (auto, fp32, mixed, bf16)")
    p.add_argument("--agreement", action="store_true", help="also print our labels' agreement with all-fp32 labels")
    p.add_argument("--onnx", action="store_true",
                   help="also run ours through onnxruntime (`batch-parse export-onnx` graphs, exported to a temp dir)")
    args = p.parse_args(argv)
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
        args.bisenet_batches = [int(b) for b in args.bisenet_batches.split(",")]
    except ValueError:
        p.error("--threads and --bisenet-batches take comma-separated integers")
    args.sets = args.sets.split(",")
    if unknown := [s for s in args.sets if s not in SETS]:
        p.error(f"unknown set {unknown[0]!r}; known: {', '.join(SETS)}")
    if min(args.threads + args.bisenet_batches) < 1 or args.images < 1 or args.rounds < 1 or args.batch_size < 1:
        p.error("--images, --rounds, --batch-size, --threads and --bisenet-batches must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    files = photo_sets(args.images, args.sets)
    decoded = {name: [decode_image(f.read_bytes(), 50_000_000) for f in fs] for name, fs in files.items()}
    bisenet = load_bisenet()
    model_name, weights = resolve(MODEL)
    sha = file_sha256(weights)
    model_version = f"{model_name}@{sha[:8]}"
    schema = output_schema(model_name, sha, "jpeg", source="bench")
    torch.set_num_threads(args.threads[0])
    runners = {"face-first": OursRunner("all", args.precision, schema, model_version),
               "whole-image": OursRunner("whole-image", args.precision, schema, model_version)}
    if args.onnx:
        from batch_parse.onnx import export_onnx

        onnx_dir = Path(tempfile.mkdtemp(prefix="peer-speed-onnx-"))
        export_onnx(onnx_dir, MODEL)
        for mode, faces in (("face-first", "all"), ("whole-image", "whole-image")):
            runners[f"{mode} onnx"] = OursRunner(faces, args.precision, schema, model_version, onnx_dir)
    precision = runners["face-first"].actor.parser.precision
    flops = arithmetic(runners["face-first"].actor.parser, bisenet)
    print(f"peer speed: torch {torch.__version__}, {os.cpu_count()} cores, our precision {precision}, "
          f"{args.images} photos a set, batch {args.batch_size}, {args.rounds} round(s); load average at start "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    chunks = {name: [(fs[i : i + args.batch_size], decoded[name][i : i + args.batch_size])
                     for i in range(0, len(fs), args.batch_size)] for name, fs in files.items()}

    for threads in args.threads:
        torch.set_num_threads(threads)
        for r in runners.values():
            r.phases.clear()
            r.faces = 0
        peers = {b: BiSeNetRunner(bisenet, b) for b in args.bisenet_batches}
        # Warm-up: thread pools, oneDNN kernels for these shapes.
        first_files, first_images = chunks[next(iter(chunks))][0]
        for r in runners.values():
            r(image_batch(first_files[:2], first_images[:2]))
            r.phases.clear()
            r.faces = 0
        for peer in peers.values():
            peer(first_images[:peer.batch])
            peer.phases.clear()
        seconds: dict[tuple[str, str], float] = Counter()
        faces: dict[tuple[str, str], int] = Counter()
        stage_s: dict[tuple[str, str], Counter] = {}
        loads = []
        turn = 0
        for _ in range(args.rounds):
            for name, set_chunks in chunks.items():
                for chunk_files, chunk_images in set_chunks:
                    batch = image_batch(chunk_files, chunk_images)
                    methods = [*runners, *(f"bisenet-{b}" for b in peers)]
                    turn += 1
                    for method in methods[turn % len(methods):] + methods[: turn % len(methods)]:
                        runner = runners.get(method) or peers[int(method.split("-")[1])]
                        before, faces_before = runner.stage_seconds(), runner.faces
                        t = time.perf_counter()
                        runner(batch if method in runners else chunk_images)
                        seconds[method, name] += time.perf_counter() - t
                        faces[method, name] += runner.faces - faces_before
                        after = runner.stage_seconds()
                        stage_s.setdefault((method, name), Counter()).update({k: after[k] - before[k] for k in after})
                loads.append(os.getloadavg()[0])
        report(threads, args, files, seconds, faces, stage_s, peers, loads)
        report_arithmetic(*flops, files, faces, args.rounds)
    if args.agreement:
        torch.set_num_threads(args.threads[0])
        agreement(decoded, args.precision)


def report(threads, args, files, seconds, faces, stage_s, peers, loads) -> None:
    n_rounds = args.rounds
    print(f"\n== {threads} thread(s): load average during the rounds {min(loads):.1f}-{max(loads):.1f} ==")
    print(f"{'set':<13}{'photos':>7}{'faces':>7}{'BiSeNet img/s':>15}{'face-first img/s':>18}{'faces/s':>9}{'ratio':>8}"
          f"{'whole-image img/s':>19}{'ratio':>8}")
    for name, fs in files.items():
        photos = len(fs) * n_rounds
        best_b = max(peers, key=lambda b: photos / seconds[f"bisenet-{b}", name])
        base = photos / seconds[f"bisenet-{best_b}", name]
        ff = photos / seconds["face-first", name]
        ff_faces = faces["face-first", name] / seconds["face-first", name]
        whole = photos / seconds["whole-image", name]
        print(f"{name:<13}{len(fs):>7}{faces['face-first', name] // n_rounds:>7}{base:>12.2f} b{best_b:<2}{ff:>18.2f}"
              f"{ff_faces:>9.2f}{ff / base:>7.2f}x{whole:>19.2f}{whole / base:>7.2f}x")
    for (method, name), target in TARGETS.items():
        if name not in files:
            continue
        photos = len(files[name]) * n_rounds
        base = max(photos / seconds[f"bisenet-{b}", name] for b in peers)
        ratio = photos / seconds[method, name] / base
        print(f"target {method} on {name} >= {target:.0f}x BiSeNet: {ratio:.2f}x ({'met' if ratio >= target else 'NOT met'})")
    if ("face-first onnx", next(iter(files))) in seconds:
        print("onnxruntime (the exported graphs, same glue code; ratios vs BiSeNet, and vs torch in brackets):")
        for name, fs in files.items():
            photos = len(fs) * n_rounds
            base = max(photos / seconds[f"bisenet-{b}", name] for b in peers)
            cells = []
            for mode in ("face-first", "whole-image"):
                rate = photos / seconds[f"{mode} onnx", name]
                cells.append(f"{mode} {rate:.2f} img/s {rate / base:.2f}x ({seconds[mode, name] / seconds[f'{mode} onnx', name]:.2f}x)")
            print(f"  {name:<12} " + "   ".join(cells))
    print("where the time goes (share of each method's wall time):")
    for name in files:
        for method in [m for m in ("face-first", "whole-image", "face-first onnx", "whole-image onnx") if (m, name) in stage_s]:
            print(f"  {name:<12} {method:<17} {shares(stage_s[method, name], OUR_STAGES)}")
        b = max(peers, key=lambda b: -seconds[f"bisenet-{b}", name])
        print(f"  {name:<12} {'BiSeNet b' + str(b):<17} {shares(stage_s[f'bisenet-{b}', name], BISENET_STAGES)}")


if __name__ == "__main__":
    main()
