"""Keeps the terminal to batch-parse's own lines while Ray runs, unless `batch-parse --verbose`.

A plain local run used to open with three lines that are no user's business: Ray's warning that
token authentication is on (ray.init, logger `ray`: its logging_level), a red `core_worker.cc ...
max_restarts > 0` line (the C++ core worker, about Ray Data's actor pool: filter_native_stderr)
and "Progress bars disabled" (Ray Data, when our own progress replaces its bars: its logger's
level). Worker output is not forwarded either (log_to_driver). Ray's errors still reach us as
exceptions, and a failing worker's traceback is in the error that ends the run.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading

_verbose = False


def set_verbose(verbose: bool) -> None:
    """`batch-parse --verbose`: show Ray's own logs (warnings, C++ core worker lines, worker output)."""
    global _verbose
    _verbose = verbose


def init_kwargs() -> dict:
    """ray.init's logging arguments for the current mode."""
    if _verbose:
        return {"logging_level": "INFO", "log_to_driver": True}
    return {"logging_level": "ERROR", "log_to_driver": False}


# A line of Ray's C++ logger: "[2026-12-06 21:45:59,968 E 7297 7297] core_worker.cc:2465: ...".
NATIVE_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWEF] \d+ \d+\] ")
_filtering = False


def drop_native_lines(line: bytes) -> bool:
    """Whether a line written to the process's stderr descriptor is Ray's C++ logging (dropped)."""
    return bool(NATIVE_LINE.match(line))


def filter_native_stderr() -> None:
    """From now on, drop the lines Ray's C++ core worker writes to this process's stderr descriptor.

    The driver's core worker logs to descriptor 2 directly, beneath Python, and its only knob
    (RAY_BACKEND_LOG_LEVEL) announces itself with a line of its own. So descriptor 2 becomes a pipe
    whose lines are copied to the real stderr unless they are C++ log lines, and Python's
    sys.stderr is pointed straight at the real stderr (a terminal stays a terminal for the
    progress bar). For the `batch-parse` command only: library users and tests keep their streams.
    """
    global _filtering
    if _verbose or _filtering:
        return
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):  # a captured stream (click's CliRunner, pytest): leave it
        return
    _filtering = True
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(real), "w"), encoding=sys.stderr.encoding, errors="backslashreplace",
                                  line_buffering=True)

    def copy() -> None:
        with os.fdopen(read, "rb", buffering=0) as lines, os.fdopen(real, "wb", buffering=0) as out:
            for line in iter(lines.readline, b""):
                if not drop_native_lines(line):
                    out.write(line)

    threading.Thread(target=copy, name="native-stderr-filter", daemon=True).start()


def quiet_ray_data() -> None:
    """Ray Data's own info and warnings (its "Progress bars disabled" among them) off, unless verbose."""
    logging.getLogger("ray.data").setLevel(logging.INFO if _verbose else logging.ERROR)
