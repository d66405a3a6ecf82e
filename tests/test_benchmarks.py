"""The throughput benchmark runs end to end on real faces and prints its table and BiSeNet ratio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from corpus import utkface_dir

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "model_throughput.py"
ROWS = (
    "stage 1 (128x128)", "localiser", "stage 2 (6 crops)", "paste-back 200x200", "whole 200x200", "whole 640x480", "BiSeNet 512x512"
)  # fmt: skip


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # One thread: on the shared 2-core box, two OpenMP threads spin against the other jobs.
    command = [sys.executable, str(SCRIPT), "--threads", "1", "--cpu-only", "--faces", str(utkface_dir()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_quick_run_prints_every_stage_and_the_bisenet_ratio():
    done = run("--quick", "--batch-sizes", "1,2", "--repeats", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("stage "))
    assert header.split() == ["stage", "GFLOP/img", "bs=1", "bs=2", "%", "peak"]
    for name in ROWS:
        (row,) = [line for line in lines if line.startswith(name)]
        rates = [float(v) for v in row[len(name) :].split()[1:3]]
        assert all(r > 0 for r in rates), row
    assert re.search(r"machine peak: [\d.]+ GFLOP/s \(best of matmul 2048\^3 [\d.]+ and 3x3 conv", done.stdout)
    ratio = re.search(r"ratio whole-model / BiSeNet images/s .*: 200x200 ([\d.]+)x, 640x480 ([\d.]+)x", done.stdout)
    assert ratio and float(ratio[1]) > 0 and float(ratio[2]) > 0


def test_user_mistakes_are_one_line_errors(tmp_path):
    missing = run("--faces", str(tmp_path / "nowhere"))
    assert missing.returncode != 0
    assert missing.stderr.strip() == f"error: face folder {tmp_path / 'nowhere'} not found (pass --faces DIR with 200x200 face JPEGs)"
    unknown = run("--weights", "nope/unknown", "--batch-sizes", "1")
    assert unknown.returncode != 0 and unknown.stderr.strip().startswith("error: no weights named 'nope/unknown'")
    assert "Traceback" not in unknown.stderr
    bad = run("--batch-sizes", "1,x")
    assert bad.returncode == 2 and "--batch-sizes must be comma-separated integers" in bad.stderr
