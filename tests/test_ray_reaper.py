"""The watchdog that takes a driver's local Ray along when the driver dies, on real processes (psutil)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from batch_parse.pipeline import ray_reaper

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
PARENT = [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(600)", *SLEEPER]


def _alive(process: subprocess.Popen) -> bool:
    return process.poll() is None


def test_descendants_and_marked_processes_are_found_and_killed_when_the_driver_goes():
    head = subprocess.Popen(PARENT)  # stands for the raylet: a process with a child
    try:
        child = None
        for _ in range(600):  # the child appears once the head's interpreter has started it
            children = psutil.Process(head.pid).children(recursive=True)
            if children:
                child = children[0]
                break
            psutil.wait_procs([psutil.Process(head.pid)], timeout=0.05)
        assert child is not None
        assert child.pid in ray_reaper.descendants([head.pid])
        # A worker started by the raylet's cluster but not below it: found by its RAY_RAYLET_PID.
        worker = subprocess.Popen(SLEEPER, env={**os.environ, "RAY_RAYLET_PID": str(head.pid)})
        stranger = subprocess.Popen(SLEEPER, env={**os.environ, "RAY_RAYLET_PID": "1"})
        for _ in range(600):
            try:
                if psutil.Process(worker.pid).environ().get("RAY_RAYLET_PID"):
                    break
            except psutil.Error:
                pass
            psutil.wait_procs([psutil.Process(worker.pid)], timeout=0.05)
        found = ray_reaper.cluster_processes(head.pid, psutil.Process(head.pid).create_time())
        assert worker.pid in found and stranger.pid not in found and os.getpid() not in found

        # The driver's pipe closes: the reaper kills the head, the marked worker, and leaves the stranger.
        reaper = subprocess.Popen([sys.executable, ray_reaper.__file__, str(head.pid)], stdin=subprocess.PIPE)
        reaper.stdin.close()
        assert reaper.wait(timeout=120) == 0
        for process in (head, worker):
            process.wait(timeout=60)
        assert not _alive(head) and not _alive(worker) and _alive(stranger)
        gone, alive = psutil.wait_procs([child], timeout=60)  # the head's child: noted before the sweep
        assert not alive
    finally:
        for process in (head, locals().get("worker"), locals().get("stranger")):
            if process is not None and _alive(process):
                process.kill()
                process.wait()
        if locals().get("child") is not None and child.is_running():
            child.kill()
