"""Watchdog that stops a driver's local Ray cluster within a second of the driver dying (SIGKILL, OOM kill).

Ray ties the head processes it starts (GCS, raylet, ...) to the driver with PR_SET_PDEATHSIG, but
their own children (workers, actors, the dashboard and runtime-env agents) notice the raylet's
death only by polling, and the agents then spend a minute trying to report to the dead GCS:
measured here, a killed driver's agents lived on for more than 60 s. `job.connect_ray` starts
this watchdog with a pipe from the driver on its stdin. Meanwhile it notes, every second, the
processes descended from the cluster's head processes; end of file means the driver is gone (or
has exited), and it kills them all: the head processes, every descendant it noted, and every
process of this user whose environment still names the cluster's raylet (RAY_RAYLET_PID, set in
workers started since the last note). Pids are checked against their start times, so a pid
reused since is never hit.

    python ray_reaper.py HEAD_PID [HEAD_PID ...] < pipe-from-the-driver     (the raylet first)

Standard library only, run by file path: it must start fast and never import the driver's code.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

NOTE_EVERY_S = 1.0


def _stat(pid: int | str) -> tuple[int, int] | None:
    """(parent pid, start in clock ticks since boot) of a live process; None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces
    except OSError:
        return None
    return None if fields[0] in (b"Z", b"X") else (int(fields[1]), int(fields[19]))


def start_time(pid: int) -> int | None:
    """Start of a live process in clock ticks since boot (tells a pid from a later reuse); None if gone."""
    stat = _stat(pid)
    return None if stat is None else stat[1]


def descendants(roots: list[int]) -> dict[int, int]:
    """pid -> start time of every live process below `roots`."""
    children: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(name)
            if stat is not None:
                children.setdefault(stat[0], []).append((int(name), stat[1]))
    found: dict[int, int] = {}
    todo = list(roots)
    while todo:
        for pid, started in children.get(todo.pop(), ()):
            if pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def cluster_processes(raylet_pid: int, since: int) -> dict[int, int]:
    """pid -> start time of this user's processes whose environment names `raylet_pid` (started at `since`)."""
    marker = f"RAY_RAYLET_PID={raylet_pid}".encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != os.getuid():
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        started = start_time(int(name))
        if marker in environ and started is not None and started >= since:
            found[int(name)] = started
    return found


def _kill(processes: dict[int, int]) -> None:
    for pid, started in processes.items():
        if start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def main(argv: list[str]) -> int:
    # The driver handles Ctrl-C and a closing terminal; we act only when it is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    heads = [int(a) for a in argv]
    noted = {pid: started for pid in heads if (started := start_time(pid)) is not None}
    if heads[0] not in noted:
        return 0
    raylet, raylet_start = heads[0], noted[heads[0]]
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], NOTE_EVERY_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # end of file: the driver's end of the pipe has closed
        noted.update(descendants(heads))
    _kill(noted)
    # Twice: a worker the dying raylet was starting may appear just after the first sweep.
    for _ in range(2):
        _kill(cluster_processes(raylet, raylet_start))
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
