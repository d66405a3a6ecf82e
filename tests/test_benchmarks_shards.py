"""The shard benchmark runs end to end on a tiny corpus and prints its figures for shards and files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "shard_scale.py"
LINE = re.compile(r"^  (local|S3), ([\d,]+) (shards|files \(one per image\)) +planning +([\d.]+) s +([\d,]+) images/s +"
                  r"peak RSS +(\d+) MB +read\+decode +([\d,]+) images/s per worker$")


def test_quick_run_measures_shards_and_files(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path), "--shards", "2", "--per-shard", "20",
                           "--files-limit", "40", "--decode", "30", "--image-side", "32"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [LINE.match(line) for line in done.stdout.splitlines() if line.startswith("  local")]
    assert [(m[1], m[3]) for m in rows if m] == [("local", "shards"), ("local", "files (one per image)")], done.stdout
    for match in rows:
        assert float(match[4]) > 0 and int(match[6]) > 0 and int(match[7].replace(",", "")) > 0, match[0]
    assert "2 shards x 20 = 40 images" in done.stdout


def test_bad_flags_are_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path), "--shards", "ten"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "--shards must be comma-separated integers, got 'ten'" in done.stderr
