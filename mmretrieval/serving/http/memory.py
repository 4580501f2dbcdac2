"""Giving memory back to the operating system after a large request.

glibc keeps freed heap memory in its arenas (one per thread that allocated), so a burst of large decodes in worker
threads leaves the process's resident size high long after. :func:`trim` asks glibc to return what is free
(``malloc_trim(0)``, which also releases free pages in the middle of every arena); on a C library without it (musl,
macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

LARGE_PIXELS = 4_000_000  # a decoded upload above this many pixels is worth a trim afterwards


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return function


def trim() -> bool:
    """Return free heap memory to the operating system; whether the C library could (glibc only)."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True
