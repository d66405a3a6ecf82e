"""The pipeline benchmark runs end to end (its own S3 server, a local Ray job) and prints its table and ratios."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from corpus import utkface_dir

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline_throughput.py"
NUMBER = r"(\d+(?:\.\d+)?)"


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--source-dir", str(utkface_dir()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _rate(lines: list[str], label: str) -> tuple[int, float]:
    (row,) = [line for line in lines if line.startswith(label)]
    images, seconds, per_s = row[len(label) :].split()[:3]
    assert float(seconds) > 0 and float(per_s) > 0, row
    return int(images), float(per_s)


def test_quick_run_prints_the_table_and_both_ratios():
    # Batch 8: two model batches, so the steady-state row has numbers. One torch thread for
    # (b) and (c): two would spin against the other processes on a shared 2-core machine.
    done = run("--quick", "--images", "16", "--batch-size", "8", "--threads", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("measurement"))
    assert header.split() == ["measurement", "images", "seconds", "images/s"]
    assert _rate(lines, "(a) job, run_job call to return")[0] == 16
    # From the first count on: on CPU the counter moves every few images within a batch
    # (stages.CPU_CHUNK), so the steady state is what is left after the first chunk.
    assert 0 < _rate(lines, "(a) job, steady state (progress counter)")[0] < 16
    assert _rate(lines, "(b) model alone (whole-image) at batch 8")[0] == 16
    assert _rate(lines, "(c) naive loop: boto3, PIL, parse at batch 1, PNG")[0] == 16
    vs_model = re.search(rf"^ratio \(a\)/\(b\) job / model alone: steady state {NUMBER}, call to return {NUMBER} \(target >= 0.9 for steady state: (met|NOT met)\)$", done.stdout, re.M)
    vs_naive = re.search(rf"^ratio \(a\)/\(c\) job / naive loop: steady state {NUMBER}, call to return {NUMBER}$", done.stdout, re.M)
    assert vs_model and vs_naive, done.stdout
    assert all(float(v) > 0 for v in (*vs_model.groups()[:2], *vs_naive.groups()))
    assert re.search(rf"^\(a\) job phases: {NUMBER} s to the first labelled batch .*, {NUMBER} s labelling the rest, {NUMBER} s from the last batch to return$", done.stdout, re.M)
    assert re.search(rf"fetch\+decode {NUMBER}, model stage {NUMBER} \(parse {NUMBER}\), encode {NUMBER}", done.stdout)
    assert "note: --threads 1 differs" in done.stdout or "(b)/(c) 1;" in done.stdout


def test_user_mistakes_are_one_line_errors(tmp_path):
    missing = run("--source-dir", str(tmp_path / "nowhere"), timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: image folder not found: {tmp_path / 'nowhere'}"
    (tmp_path / "a.jpg").write_bytes(utkface_dir().joinpath(sorted(p.name for p in utkface_dir().iterdir())[0]).read_bytes())
    few = run("--source-dir", str(tmp_path), "--images", "2", timeout=60)
    assert few.returncode == 1 and few.stderr.strip() == f"error: asked for 2 images, {tmp_path} has 1"
    bad = run("--batch-size", "0", timeout=60)
    assert bad.returncode == 2 and "--images, --batch-size and --threads must be >= 1" in bad.stderr
