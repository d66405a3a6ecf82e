"""Live progress of a running job: images done, faces found, images/s, ETA, errors so far.

The parse stage reports each finished batch to a small Ray actor; the driver polls it and
prints one status line (redrawn in place on a terminal, every 10 s in logs).
"""

from __future__ import annotations

import sys
import threading
import time

import ray


@ray.remote(num_cpus=0)
class ProgressCounter:
    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.faces = 0

    def add(self, ok: int, errors: int, faces: int = 0) -> None:
        self.ok += ok
        self.errors += errors
        self.faces += faces

    def totals(self) -> tuple[int, int, int]:
        return self.ok, self.errors, self.faces


def start_counter():
    """A ProgressCounter on the driver's own node.

    Placed anywhere, it can land on a worker node; when that node is lost the counter goes with
    it, and progress (cosmetic) must not be what stops a run that Ray Data itself recovers.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ProgressCounter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressPrinter:
    """Context manager: a thread printing the counter's totals until the block ends."""

    def __init__(self, counter, total: int, stream=sys.stderr):
        self.counter, self.total, self.stream = counter, total, stream
        self.tty = stream.isatty()
        self.interval = 1.0 if self.tty else 10.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._totals = (0, 0, 0)
        self._final = ""

    def line(self, elapsed: float) -> str:
        try:
            self._totals = ray.get(self.counter.totals.remote(), timeout=30)
            lost = ""
        except ray.exceptions.RayError:  # the counter is gone (its node lost): the run goes on without it
            lost = " (progress counter lost: figures stopped)"
        ok, errors, faces = self._totals
        done = ok + errors
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = _eta((self.total - done) / rate) if rate > 0 else "?"
        pct = 100 * done / self.total if self.total else 100.0
        return (f"labelled {done}/{self.total} images ({pct:.0f}%), {faces} faces, {errors} errors, "
                f"{rate:.1f} images/s, ETA {eta}{lost}")

    def _loop(self) -> None:
        start = time.time()
        while not self._stop.wait(self.interval):
            self._emit(self.line(time.time() - start))
        self._final = self.line(time.time() - start)

    def _emit(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(100))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self) -> "ProgressPrinter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._final:
            self._emit(self._final)
        if self.tty:
            self.stream.write("\n")
