"""The service's worker pools carry their names to the OS, where per-thread CPU views read them."""

import sys
import threading

import pytest

from service.threads import named_pool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names via prctl: Linux only")


def _os_name() -> str:
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        return f.read().strip()


def test_pool_workers_have_their_python_names_at_the_os_level():
    pool = named_pool("decode", 2)
    try:
        barrier = threading.Barrier(2)  # both workers busy at once: two threads, two names

        def name() -> str:
            barrier.wait(timeout=5)
            return _os_name()

        names = sorted(f.result() for f in [pool.submit(name), pool.submit(name)])
    finally:
        pool.shutdown()
    assert names == ["decode_0", "decode_1"]
    assert _os_name() != "decode_0"  # the caller's own name is untouched
