"""The throughput benchmark runs end to end on real faces and prints its table and BiSeNet ratio."""

from __future__ import annotations

import json
import os
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


PEER_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peer_speed.py"


def test_peer_speed_quick_run_prints_ratios_shares_and_agreement():
    command = [sys.executable, str(PEER_SCRIPT), "--images", "2", "--rounds", "1", "--threads", "1", "--batch-size", "2",
               "--sets", "profiles,tight-crops", "--agreement", "--onnx"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for name in ("profiles", "tight-crops"):
        row = re.search(rf"^{name}\s+2\s+\d+\s+([\d.]+) b1\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)\s+([\d.]+)x$", out, re.M)
        assert row and all(float(v) > 0 for v in row.groups()), out
        assert re.search(rf"^  {name}\s+face-first\s+detect \d+%  align \d+%  stage1 \d+%", out, re.M), out
        assert re.search(rf"^  {name}\s+face-first\s+\d+ faces: [\d.]+% of pixels agree, [\d.]+% of face-part pixels$", out, re.M), out
    assert re.search(r"^target whole-image on tight-crops >= 4x BiSeNet: [\d.]+x \((met|NOT met)\)$", out, re.M), out
    for name in ("profiles", "tight-crops"):
        assert re.search(rf"^  {name}\s+face-first [\d.]+ img/s [\d.]+x \([\d.]+x\)\s+whole-image [\d.]+ img/s", out, re.M), out
        assert re.search(rf"^  {name}\s+[\d.]+ faces a photo -> [\d.]+x \(whole-image: [\d.]+x\)$", out, re.M), out
    flops = re.search(r"^arithmetic: ours ([\d.]+) GFLOP a face \(stage1 ([\d.]+), localiser ([\d.]+), stage2 ([\d.]+)\), "
                      r"BiSeNet ([\d.]+) GFLOP a photo", out, re.M)
    assert flops and abs(float(flops[1]) - sum(map(float, flops.groups()[1:4]))) < 0.02 and float(flops[5]) > 10, out


def test_peer_speed_without_the_peer_code_is_one_line(tmp_path):
    # A shared/ folder with the photos but no peers/bisenet: the benchmark says so in one line.
    from corpus import shared_dir

    (tmp_path / "data").mkdir()
    for name in ("utkface", "facepool"):
        (tmp_path / "data" / name).symlink_to(shared_dir() / "data" / name)
    env = {**os.environ, "BATCH_PARSE_SHARED": str(tmp_path)}
    done = subprocess.run([sys.executable, str(PEER_SCRIPT), "--images", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: BiSeNet peer code not found: {tmp_path / 'peers' / 'bisenet'} must hold face-parsing.PyTorch's model.py and resnet.py"


def test_cfp_probes_scores_every_model_and_both_swaps(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cfp_probes.py"
    done = subprocess.run([sys.executable, str(script), "--limit", "3", "--json", str(tmp_path / "cfp.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = re.findall(r"^  (.+?)\s+(frontal|profile)\s+([\d.]+)((?:\s+[\d.]+){5})$", done.stdout, re.M)
    names = {name for name, _, _, _ in rows}
    assert names == {"stn-icnn/v2", "stn-icnn/v3", "stn-icnn/v2 + stn-icnn/v3's localiser",
                     "stn-icnn/v3 + stn-icnn/v2's localiser"}, done.stdout
    assert all(0 <= float(v) <= 100 for _, _, total, cells in rows for v in [total, *cells.split()]), done.stdout
    rates = json.loads((tmp_path / "cfp.json").read_text())["probe_hits"]
    for name, pose, total, _ in rows:  # the JSON holds what the table prints (a pose without probes: neither)
        key = f"{name}/{pose}/all"
        assert f"{100 * rates[key]['rate']:.1f}" == total if key in rates else total == "0.0"
    assert any(key.endswith("/frontal/all") for key in rates)


def test_model_targets_names_every_target_missed_and_every_place_below_the_baseline():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from model_targets import verdict

    base = {"cfp/frontal": 77.7, "cfp/profile": 56.3, "probes/turned": 66.8, "f1/frontal": 90.34, "f1/profile": 81.76,
            "skin/frontal": 0.0, "skin/profile": 0.0}
    better = base | {"cfp/frontal": 79.5, "cfp/profile": 66.0, "probes/turned": 72.0, "f1/frontal": 90.34,
                     "skin/frontal": 93.2, "skin/profile": 88.1}
    assert verdict(base, better) == ([], [])
    worse = better | {"f1/profile": 81.0, "skin/profile": 87.9}
    missed, below = verdict(base, worse)
    assert missed == ["skin/profile: 87.90 < 88.00"] and below == ["f1/profile: 81.00 < 81.76"]
