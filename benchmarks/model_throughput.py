"""Images/s and FLOPs of each STN-iCNN stage and the whole parser, against a BiSeNet-shaped baseline.

    python benchmarks/model_throughput.py                  # all batch sizes, CPU (+ CUDA if present)
    python benchmarks/model_throughput.py --quick          # smoke run: two batch sizes, few repeats
    python benchmarks/model_throughput.py --threads 2 --batch-sizes 1,16

Inputs are real UTKFace crops (200x200) and the same faces placed on 640x480 frames. Unless
--weights is given the model is random with its localiser pinned to typical part windows, so crops
and paste-back cost what they cost on real faces (cost does not depend on what weights learnt).
FLOPs count conv and linear layers only (2 x multiply-adds); "% peak" compares achieved FLOP/s
with the machine's peak, measured with a large matmul and a large convolution on the same
threads. The BiSeNet stand-in (ResNet-18 context path, spatial path, FFM, 19 classes at 512x512,
random weights) is what a typical face parser costs per image; the target is whole-model >= 2x
its rate.

On a machine shared with other busy processes, use --threads 1: torch's OpenMP threads spin
against the other jobs and the iCNN's many small convolutions slow down by up to ~70x.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from batch_parse.model import geometry
from batch_parse.model.config import DEFAULT_CONFIG
from batch_parse.model.parser import FaceParser, load_parser
from batch_parse.model.resnet import ResNet18
from batch_parse.model.stn_icnn import STNiCNN
from batch_parse.model.weights import WeightsError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FACES = REPO.parent / "shared" / "data" / "utkface"
ALL_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
BISENET_MAX_BATCH = 16  # 512x512 batches beyond this only cost memory, not insight
# Typical windows on an aligned 200x200 UTKFace crop, PARTS order: (centre x, centre y, half side) px.
TYPICAL_WINDOWS = ((70, 85, 20), (130, 85, 20), (72, 102, 16), (128, 102, 16), (100, 125, 22), (100, 152, 28))


# ---- a BiSeNet-shaped baseline (Yu et al. 2018, as in the common face-parsing port) ----


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.attention = nn.Sequential(nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * self.attention(F.adaptive_avg_pool2d(x, 1))


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 1)
        self.attention = nn.Sequential(nn.Conv2d(cout, cout // 4, 1), nn.ReLU(inplace=True), nn.Conv2d(cout // 4, cout, 1), nn.Sigmoid())

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.cat([spatial, context], 1))
        return x + x * self.attention(F.adaptive_avg_pool2d(x, 1))


class BiSeNet(nn.Module):
    """(N,3,512,512) -> (N,19,512,512) logits; ~13 M parameters."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.backbone = ResNet18(3, 1)
        self.backbone.fc = nn.Identity()
        self.spatial = nn.Sequential(ConvBNReLU(3, 64, 7, 2), ConvBNReLU(64, 64, 3, 2), ConvBNReLU(64, 64, 3, 2), ConvBNReLU(64, 128, 1))
        self.arm16, self.arm32 = AttentionRefinement(256, 128), AttentionRefinement(512, 128)
        self.global_conv = ConvBNReLU(512, 128, 1)
        self.head16, self.head32 = ConvBNReLU(128, 128), ConvBNReLU(128, 128)
        self.ffm = FeatureFusion(256, 256)
        self.out = nn.Sequential(ConvBNReLU(256, 256), nn.Conv2d(256, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        f = F.max_pool2d(F.relu(b.bn1(b.conv1(x))), 3, 2, 1)
        f16 = b.layer3(b.layer2(b.layer1(f)))
        f32 = b.layer4(f16)
        glob = self.global_conv(F.adaptive_avg_pool2d(f32, 1))
        up32 = F.interpolate(self.arm32(f32) + glob, size=f16.shape[-2:], mode="nearest")
        up32 = self.head32(up32)
        up16 = F.interpolate(self.arm16(f16) + up32, scale_factor=2, mode="nearest")
        up16 = self.head16(up16)
        fused = self.ffm(self.spatial(x), up16)
        return F.interpolate(self.out(fused), size=x.shape[-2:], mode="bilinear", align_corners=False)


# ---- measuring ----


def flops_per_image(model: nn.Module, run, images: int) -> float:
    """2 x multiply-adds of every conv and linear layer `run()` executes, per image."""
    macs = 0

    def count(module, inputs, output):
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            macs += output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            macs += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return 2 * macs / images


def seconds(run, sync, repeats: int, warmup: int) -> list[float]:
    with torch.inference_mode():
        for _ in range(warmup):
            run()
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - start)
    return times


def machine_peak(device: torch.device, dtype: torch.dtype, sync, repeats: int) -> tuple[float, str]:
    """FLOP/s of the fastest of a large matmul and a large 3x3 convolution, and how each did.

    The conv is there because the matmul alone understates some machines: on this project's AMD
    EPYC, MKL's sgemm reached 115 GFLOP/s a core while oneDNN's direct convolution reached 227.
    """
    cuda = device.type == "cuda"
    n = 8192 if cuda else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    batch = 32 if cuda else 1
    x, w = torch.randn(batch, 256, 64, 64, device=device, dtype=dtype), torch.randn(256, 256, 3, 3, device=device, dtype=dtype)
    # The fastest run: a peak is what the machine can do, not what it did while busy.
    matmul = 2 * n**3 / min(seconds(lambda: a @ b, sync, repeats, warmup=1))
    conv = 2 * 256 * 256 * 9 * 64 * 64 * batch / min(seconds(lambda: F.conv2d(x, w, padding=1), sync, repeats, warmup=1))
    kind = str(dtype).removeprefix("torch.")
    return max(matmul, conv), f"best of matmul {n}^3 {matmul / 1e9:.1f} and 3x3 conv 256ch {conv / 1e9:.1f}, {kind}"


# ---- inputs ----


def load_faces(folder: Path, count: int) -> list[np.ndarray]:
    if not folder.is_dir():
        raise SystemExit(f"error: face folder {folder} not found (pass --faces DIR with 200x200 face JPEGs)")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    if not paths:
        raise SystemExit(f"error: no JPEG or PNG images in {folder}")
    faces = [np.array(Image.open(p).convert("RGB").resize((200, 200))) for p in paths]
    return [faces[i % len(faces)] for i in range(count)]


def on_640x480(face: np.ndarray) -> np.ndarray:
    frame = Image.new("RGB", (640, 480), (118, 118, 118))
    frame.paste(Image.fromarray(face).resize((360, 360), Image.BILINEAR), (140, 60))
    return np.array(frame)


def build_model(weights: str | None) -> tuple[STNiCNN, str]:
    if weights:
        try:
            parser = load_parser(weights, device="cpu")
        except WeightsError as exc:
            raise SystemExit(f"error: {exc}") from None
        return parser.model, parser.model_version
    model = STNiCNN(DEFAULT_CONFIG).eval()
    windows = torch.tensor([[[h, x, h, y] for x, y, h in TYPICAL_WINDOWS]], dtype=torch.float64)
    theta = geometry.windows_to_theta(windows, [(200, 200)], DEFAULT_CONFIG)
    with torch.no_grad():
        model.localiser.fc.weight.zero_()
        model.localiser.fc.bias.copy_(theta.flatten())
    return model, "random, localiser pinned to typical part windows"


# ---- the table ----


def benchmark(device: torch.device, model: STNiCNN, faces: list[np.ndarray], args) -> None:
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    precision = "auto"  # what ships: stage 2 in bf16 on CUDA and on CPUs with native bf16 (parser.py)
    parser = FaceParser(model, "bench", "0" * 64, device=str(device), precision=precision)
    model = parser.model
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    wide = [on_640x480(f) for f in faces]
    most = max(args.batch_sizes)

    # Real stage inputs, computed once for the largest batch.
    with torch.inference_mode():
        tensors = [torch.from_numpy(f).to(device).permute(2, 0, 1) for f in faces[:most]]
        x = torch.stack([geometry.stage1_input(t, model.cfg) for t in tensors])
        probs = model.stage1(x).softmax(1)
        windows = geometry.theta_to_windows(model.localise(probs), [(200, 200)] * most, model.cfg)
        crops = torch.stack([geometry.crop_parts(t, w, model.cfg.part_size) for t, w in zip(tensors, windows)])
        part_probs = [p.softmax(1) for p in model.parse_parts(crops)]

    def with_autocast(fn):
        def run():
            with autocast():
                fn()

        return run

    def paste(b: int) -> None:
        for i in range(b):
            geometry.label_map([p[i] for p in part_probs], windows[i], 200, 200, model.cfg.paste_mode)

    bisenet = BiSeNet().to(device).eval()
    big = torch.rand(min(most, BISENET_MAX_BATCH), 3, 512, 512, device=device)
    rows = [
        ("stage 1 (128x128)", lambda b: with_autocast(lambda: model.stage1(x[:b])), lambda: model.stage1(x[:1])),
        ("localiser", lambda b: with_autocast(lambda: model.localise(probs[:b])), lambda: model.localise(probs[:1])),
        ("stage 2 (6 crops)", lambda b: with_autocast(lambda: model.parse_parts(crops[:b])), lambda: model.parse_parts(crops[:1])),
        ("paste-back 200x200", lambda b: lambda: paste(b), None),
        ("whole 200x200", lambda b: lambda: parser.parse(faces[:b]), lambda: parser.parse(faces[:1])),
        ("whole 640x480", lambda b: lambda: parser.parse(wide[:b]), lambda: parser.parse(wide[:1])),
        ("BiSeNet 512x512", lambda b: with_autocast(lambda: bisenet(big[:b])), lambda: bisenet(big[:1])),
    ]
    peak, peak_note = machine_peak(device, torch.bfloat16 if cuda else torch.float32, sync, repeats=max(3, args.repeats))

    threads = f", {torch.get_num_threads()} threads" if not cuda else f" ({torch.cuda.get_device_name(device)}), bf16 autocast"
    print(f"\n{device.type.upper()}{threads}: images/s, median of {args.repeats} after {args.warmup} warm-up; "
          f"'whole' rows at the parser's precision ({parser.precision})")
    sizes = args.batch_sizes
    print(f"{'stage':<20}{'GFLOP/img':>10}" + "".join(f"{'bs=' + str(b):>9}" for b in sizes) + f"{'% peak':>9}")
    best: dict[str, float] = {}
    for name, make, once in rows:
        owner = bisenet if name.startswith("BiSeNet") else model
        flops = flops_per_image(owner, with_autocast(once), 1) if once else 0.0
        rates = []
        for b in sizes:
            if name.startswith("BiSeNet") and b > BISENET_MAX_BATCH:
                rates.append(float("nan"))
                continue
            rates.append(b / statistics.median(seconds(make(b), sync, args.repeats, args.warmup)))
        best[name] = np.nanmax(rates)
        share = f"{100 * flops * best[name] / peak:8.1f}%" if flops else f"{'-':>9}"
        cells = "".join(f"{r:9.1f}" if r == r else f"{'-':>9}" for r in rates)
        gflops = f"{flops / 1e9:10.3f}" if flops else f"{'-':>10}"
        print(f"{name:<20}{gflops}{cells}{share}")
    print(f"machine peak: {peak / 1e9:.1f} GFLOP/s ({peak_note}); % peak counts nominal conv/linear FLOPs")
    base = best["BiSeNet 512x512"]
    print(
        f"ratio whole-model / BiSeNet images/s (best batch each): 200x200 {best['whole 200x200'] / base:.2f}x, "
        f"640x480 {best['whole 640x480'] / base:.2f}x (target >= 2x)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: batch sizes 1 and 8, 2 repeats")
    p.add_argument("--batch-sizes", help="comma-separated, e.g. 1,16 (default 1,2,4,...,64)")
    p.add_argument("--repeats", type=int, help="timed repeats per cell (default 5, --quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before each cell (default 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    p.add_argument("--weights", help="weights name or .safetensors path (default: random, pinned windows)")
    p.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="folder of face JPEGs (default shared/data/utkface)")
    p.add_argument("--cpu-only", action="store_true", help="skip CUDA even when present")
    args = p.parse_args(argv)
    try:
        sizes = tuple(int(s) for s in args.batch_sizes.split(",")) if args.batch_sizes else None
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if sizes is not None and min(sizes) < 1:
        p.error("--batch-sizes must be positive")
    args.batch_sizes = sizes or ((1, 8) if args.quick else ALL_BATCH_SIZES)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.repeats < 1 or args.threads < 1 or args.warmup < 0:
        p.error("--repeats and --threads must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    faces = load_faces(args.faces, max(args.batch_sizes))
    model, description = build_model(args.weights)
    print(f"STN-iCNN throughput; torch {torch.__version__}; weights: {description}")
    benchmark(torch.device("cpu"), model, faces, args)
    if torch.cuda.is_available() and not args.cpu_only:
        benchmark(torch.device("cuda"), model, faces, args)


if __name__ == "__main__":
    sys.exit(main())
