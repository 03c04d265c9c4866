"""The processes of a sandbox slot, seen from the host through /proc: which run under a uid, how much CPU a
process tree used, and killing every process of a uid until none is left (pipeline/verifiers/sandbox.py uses
them to measure and end each slot's programs).
"""

from __future__ import annotations

import os
import signal
import time


def pids_of_uid(uid: int, zombies: bool = True) -> list[int]:
    """Host pids of the processes running under ``uid`` (``zombies=False``: those that can still run)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid and (zombies or not is_zombie(name)):
                    pids.append(int(name))
            except OSError:
                pass  # the process ended while we looked
    return pids


def is_zombie(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True  # gone


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used by ``pid``, its live descendants and every child they reaped (0 once it ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK") + sum(tree_cpu_s(c) for c in children(pid))


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:  # needs CONFIG_PROC_CHILDREN
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def kill_uid(uid: int, deadline_s: float = 2.0) -> int:
    """SIGKILL every process of ``uid`` until none is left; return how many were found at first. A zombie
    counts as gone: it runs nothing, and when its parent was the slot's bwrap, the host's init reaps it
    whenever it gets to it (seconds, on some container inits)."""
    first = None
    end = time.monotonic() + deadline_s
    while True:
        pids = pids_of_uid(uid, zombies=False)
        if first is None:
            first = len(pids)
        if not pids or time.monotonic() > end:
            return first
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)
