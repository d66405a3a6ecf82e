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

psutil, not our own /proc parsing (issue 27 item 8): it finds descendants and environments the
same way on Linux and on the macOS laptops the README promises, and it refuses to signal a pid
reused since it was noted (a Process object carries its start time). Measured cost: importing it
adds 0.07-0.1 s and 2.6 MB to this process's start, well inside the second it has. Run by file
path: it must start fast and never import the driver's code.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

import psutil

NOTE_EVERY_S = 1.0


def descendants(roots: list[int]) -> dict[int, psutil.Process]:
    """pid -> Process of every live process below `roots` (the roots themselves not included)."""
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            found.update((child.pid, child) for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:  # gone, or not ours to see
            continue
    return found


def cluster_processes(raylet_pid: int, since: float) -> dict[int, psutil.Process]:
    """pid -> Process of this user's processes whose environment names `raylet_pid` (started at `since`)."""
    marker = str(raylet_pid)
    me, uid = os.getpid(), os.getuid()
    found = {}
    for process in psutil.process_iter(["uids", "create_time"]):
        try:
            if process.pid == me or process.info["uids"] is None or process.info["uids"].real != uid:
                continue
            if process.info["create_time"] >= since and process.environ().get("RAY_RAYLET_PID") == marker:
                found[process.pid] = process
        except psutil.Error:
            continue
    return found


def _kill(processes: dict[int, psutil.Process]) -> None:
    for process in processes.values():
        try:
            process.kill()  # psutil checks the pid was not reused since the Process was made
        except psutil.Error:
            pass


def main(argv: list[str]) -> int:
    # The driver handles Ctrl-C and a closing terminal; we act only when it is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    heads = [int(a) for a in argv]
    noted: dict[int, psutil.Process] = {}
    for pid in heads:
        try:
            noted[pid] = psutil.Process(pid)
        except psutil.Error:
            continue
    if heads[0] not in noted:
        return 0
    raylet, raylet_start = heads[0], noted[heads[0]].create_time()
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], NOTE_EVERY_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # end of file: the driver's end of the pipe has closed
        noted.update(descendants(heads))
    noted.update(descendants(heads))  # once more: what was started since the last note (or before the first)
    _kill(noted)
    # Twice: a worker the dying raylet was starting may appear just after the first sweep.
    for _ in range(2):
        _kill(cluster_processes(raylet, raylet_start))
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
