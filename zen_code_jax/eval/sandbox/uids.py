"""Dedicated sandbox uids (root mode): one per concurrent slot, and the post-run sweep.

Why one uid per slot: RLIMIT_NPROC counts a uid's processes, and the sweep kills every
process of a uid, so neither may ever touch another run (or another evaluator process: the
uid base depends on the pid of the process that first asks for a slot).

The pool is built on first use, under a lock, so importing the sandbox costs nothing and
concurrent first calls from many worker threads build exactly one pool.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time

SLOTS = 256  # concurrent sandboxed programs per evaluator process

_pool: queue.SimpleQueue[int] | None = None
_uid_base = 0
_pool_lock = threading.Lock()


def _get_pool() -> tuple[queue.SimpleQueue[int], int]:
    global _pool, _uid_base
    with _pool_lock:
        if _pool is None:
            _uid_base = 1_900_000 + (os.getpid() % 4000) * SLOTS
            pool: queue.SimpleQueue[int] = queue.SimpleQueue()
            for i in range(SLOTS):
                pool.put(i)
            _pool = pool
        return _pool, _uid_base


def acquire_uid() -> int:
    """A sandbox uid no other run of this process is using; blocks while all are taken."""
    pool, base = _get_pool()
    return base + pool.get()


def release_uid(uid: int) -> None:
    """Give back a uid from `acquire_uid` (after its processes were swept)."""
    pool, base = _get_pool()
    pool.put(uid - base)


def is_root() -> bool:
    return os.geteuid() == 0


def pids_of_uid(uid: int) -> list[int]:
    """Every live process owned by `uid` (read from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    out.append(int(name))
            except OSError:
                pass
    return out


def sweep_uid(uid: int, rounds: int = 50) -> int:
    """SIGKILL every process owned by `uid` (a dedicated sandbox uid); returns survivors."""
    pids: list[int] = []
    for _ in range(rounds):
        pids = pids_of_uid(uid)
        if not pids:
            return 0
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)
    return len(pids)
