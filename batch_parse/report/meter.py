"""One progress display for every long command (run, export, render, import, train), on tqdm.

tqdm (MPL-2.0/MIT, pure Python, no dependencies) does what our hand-written printers did less well:
an exponentially smoothed rate, so the rate and the ETA settle instead of jumping with each batch,
a bar redrawn in place on a terminal, and the same numbers formatted for a log. On a terminal tqdm
draws itself; elsewhere (CI, `submit` logs, a pipe) a plain line is printed every `log_interval`
seconds and once at the end, so logs get a few lines instead of carriage returns.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LOG_INTERVAL = 10.0  # seconds between lines when stderr is no terminal
SMOOTHING = 0.1  # tqdm's EMA weight of the latest interval: low, so one fast or slow batch moves the ETA little


class _Nowhere:
    """tqdm's file when it must not draw (logs): it keeps counting, its redraws go nowhere."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class Meter:
    """A progress display of `total` items; call set(done, note) as often as convenient, then close()."""

    def __init__(self, total: int | None, what: str, unit: str = "images", stream=None, log_interval: float = LOG_INTERVAL,
                 quiet_for: float = 0.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_interval, self.quiet_for = log_interval, quiet_for
        self.what = what
        self.start = time.monotonic()
        self.logged = 0.0
        self.shown = False
        fmt = (f"{what} {{n_fmt}}/{{total_fmt}} {unit} ({{percentage:.0f}}%) {{bar}} {{rate_fmt}}, ETA {{remaining}}{{postfix}}"
               if total else f"{what} {{n_fmt}} {unit}, {{rate_fmt}}{{postfix}}")
        self.bar = tqdm(total=total or None, unit=f" {unit}", file=self.stream if self.tty else _Nowhere(), smoothing=SMOOTHING,
                        bar_format=fmt, dynamic_ncols=True, mininterval=0.5, leave=True, delay=quiet_for if self.tty else 0)

    def set(self, done: int, note: str = "") -> None:
        """The count so far (absolute) and a short note (", 14 faces, 0 errors")."""
        if note != self.bar.postfix:
            self.bar.postfix = note  # shown on the next refresh: no extra redraw
        self.bar.update(done - self.bar.n)  # update(0) too: a quiet interval lowers the smoothed rate, as it should
        now = time.monotonic()
        if not self.tty and now - self.start >= self.quiet_for and now - self.logged >= self.log_interval:
            self._log(now)

    def write(self, text: str) -> None:
        """A line of its own (a log message) above the bar, which tqdm redraws below it."""
        if self.tty:
            self.bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def line(self) -> str:
        # The same figures without the bar: a log line is read, not watched.
        return self.bar.format_meter(**{**self.bar.format_dict, "bar_format": self.bar.bar_format.replace("{bar} ", "")})

    def _log(self, now: float) -> None:
        self.logged, self.shown = now, True
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self, done: int | None = None, note: str | None = None) -> None:
        """The final figures once more, then the display ends (nothing for a short quiet one)."""
        if done is not None:
            self.set(done, self.bar.postfix if note is None else note)
        if not self.tty and (self.shown or time.monotonic() - self.start >= self.quiet_for):
            self._log(time.monotonic())
        self.bar.close()
