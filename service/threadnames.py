"""Name OS threads after their role, so ``top -H`` and the benchmarks' CPU probe can tell them apart.

Python's thread names stay inside Python; the kernel sees every thread as
``python``. ``prctl(PR_SET_NAME)`` sets the name ``/proc/<pid>/task/*/comm``
shows (15 bytes at most): ``fs-decode`` for decoder threads, ``fs-model`` for
instance threads. Once per thread; a platform without prctl keeps the default.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

_PR_SET_NAME = 15
_libc = None
with contextlib.suppress(OSError, TypeError):
    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def name_os_thread(name: str) -> None:
    """Give the calling thread the kernel name ``name`` (truncated to 15 bytes)."""
    if _libc is None:
        return
    with contextlib.suppress(AttributeError, OSError):
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
