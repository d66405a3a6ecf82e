"""Live progress of a running job: images done, faces found, images/s, ETA, errors so far.

The parse stage reports each finished image to a small Ray actor; the driver polls it and
shows one progress bar (report/meter.py: redrawn in place on a terminal, a line every 10 s in logs).
"""

from __future__ import annotations

import threading

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


class ProgressPrinter:
    """Context manager: a thread showing the counter's totals (report/meter.py) until the block ends.

    The counter is polled twice a second; the actors add images as each finishes (stages.py), so
    the count moves image by image and tqdm's smoothed rate and ETA settle."""

    POLL_SECONDS = 0.5

    def __init__(self, counter, total: int, stream=None):
        self.counter, self.total, self.stream = counter, total, stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._totals = (0, 0, 0)
        self._lost = ""
        self.meter = None

    def poll(self) -> tuple[int, str]:
        try:
            self._totals = ray.get(self.counter.totals.remote(), timeout=30)
        except ray.exceptions.RayError:  # the counter is gone (its node lost): the run goes on without it
            self._lost = " (progress counter lost: figures stopped)"
        ok, errors, faces = self._totals
        return ok + errors, f"{faces} faces, {errors} errors{self._lost}"

    def _loop(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            self.meter.set(*self.poll())

    def __enter__(self) -> "ProgressPrinter":
        from batch_parse.report.meter import Meter

        self.meter = Meter(self.total, "labelled", stream=self.stream)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.meter.close(*self.poll())
