"""What a user sees while a command runs: our progress lines, and none of Ray's own noise unless --verbose."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from batch_parse.demo import IMAGES_DIR, demo_images
from batch_parse.pipeline.ray_noise import drop_native_lines
from batch_parse.report.meter import Meter

ROOT = Path(__file__).resolve().parents[1]
# The three lines every local run opened with (issue 27), as Ray 2.60 wrote them.
RAY_NOISE = ("Token authentication is enabled", "core_worker.cc", "Progress bars disabled")


class _Log(io.StringIO):
    """A stream that is not a terminal, like a CI log or `submit`'s."""

    def isatty(self) -> bool:
        return False


def test_meter_logs_plain_lines_with_count_percentage_rate_eta_and_note():
    log = _Log()
    meter = Meter(11, "labelled", stream=log, log_interval=0)
    meter.set(3, "3 faces, 0 errors")
    meter.close(11, "14 faces, 0 errors")
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("labelled 3/11 images (27%) ") and lines[0].endswith(", 3 faces, 0 errors")
    assert "images/s, ETA " in lines[0] and "\r" not in log.getvalue()  # a log gets lines, not carriage returns
    assert lines[-1].startswith("labelled 11/11 images (100%) ") and lines[-1].endswith("14 faces, 0 errors")


def test_a_short_quiet_meter_prints_nothing():
    log = _Log()
    meter = Meter(5, "exporting: read", unit="rows", stream=log, quiet_for=3600)
    meter.set(5, "1 images written")
    meter.close()
    assert log.getvalue() == ""


def test_ray_native_log_lines_are_recognised_and_ours_are_not():
    native = (b"[2026-12-06 21:45:59,968 E 7297 7297] core_worker.cc:2465: Actor with class name: 'MapWorker(...)' has "
              b"constructor arguments in the object store and max_restarts > 0.\n")
    assert drop_native_lines(native)
    assert drop_native_lines(b"[2026-12-06 21:47:36,084 I 10602 10602] logging.cc:303: Set ray log level\n")
    for ours in (b"labelled 3/11 images (27%) 2.9 images/s, ETA 00:02, 3 faces, 0 errors\n", b"Error: output x is busy\n",
                 b"[train 21:00:00] stage a step 10/300 loss 0.1\n"):
        assert not drop_native_lines(ours)


def test_run_shows_our_progress_and_none_of_rays_noise(tmp_path):
    """A real `batch-parse run` (local Ray) on the demo photos, stderr a pipe as in CI: the progress
    lines count images to the end, and Ray's token warning, core worker line and Data banner are gone."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "batch_parse.cli", "run", str(IMAGES_DIR), str(tmp_path / "labels")],
                            capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    n = len(demo_images())
    for noise in RAY_NOISE:
        assert noise not in result.stderr, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("labelled ")]
    assert progress and progress[-1].startswith(f"labelled {n}/{n} images (100%) ") and " faces, 0 errors" in progress[-1]
    assert all(line.startswith("labelled ") for line in result.stderr.splitlines() if line.strip()), result.stderr
    assert f"images:   {n} labelled" in result.stdout
