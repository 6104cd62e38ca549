"""Processes by their own ids: the descendants of a process, liveness checked by start
time (a reused pid is not ours), and killing exactly those."""
from __future__ import annotations

import os
import signal
import time
from typing import Iterable, Mapping


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="utf-8", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat); with
    the pid it names one process, so a recycled pid is never mistaken for ours."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(roots: Iterable[int]) -> dict[int, int]:
    """``roots`` and every live process below them (Linux /proc), as ``{pid: start_time}``."""
    kids = _children_map()
    out: dict[int, int] = {}
    stack = list(roots)
    while stack:
        p = stack.pop()
        if p in out:
            continue
        st = _start_time(p)
        if st is not None:
            out[p] = st
        stack.extend(kids.get(p, []))
    return out


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Alive, not a zombie and (when given) still the process that started at ``start_time``."""
    st = _start_time(pid)
    return st is not None and (start_time is None or st == start_time)


def kill_pids(pids: Mapping[int, int], grace_s: float = 3.0) -> dict[int, int]:
    """SIGTERM the processes ``{pid: start_time}``, SIGKILL those alive after ``grace_s``;
    returns those still alive. Processes whose pid now names another process are skipped."""
    left = {p: st for p, st in pids.items() if p != os.getpid() and pid_alive(p, st)}
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for p, st in left.items():
            if pid_alive(p, st):
                try:
                    os.kill(p, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            left = {p: st for p, st in left.items() if pid_alive(p, st)}
            if not left:
                return {}
            time.sleep(0.05)
    return {p: st for p, st in left.items() if pid_alive(p, st)}
