"""The service's worker threads, named where the OS shows them (`top -H`, /proc/PID/task/*/comm).

Python names a thread only for itself; the OS keeps calling every thread "python", so a per-thread
CPU view cannot tell the model thread from a decode thread. `named_pool` gives each worker its
Python name at the OS level too (Linux; elsewhere the threads keep the OS's name).
"""

from __future__ import annotations

import ctypes
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

_PR_SET_NAME = 15  # prctl(2): the calling thread's name, 15 bytes at most
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def name_os_thread() -> None:
    """Give the calling thread its Python name at the OS level (cut to 15 bytes)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)


def named_pool(prefix: str, workers: int) -> ThreadPoolExecutor:
    """A thread pool whose workers the OS lists as `prefix_0`, `prefix_1`, ..."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix, initializer=name_os_thread)
