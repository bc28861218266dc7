"""Keep freed feature maps in glibc's heap while the network runs on CPU.

By default glibc serves large allocations (above ``M_MMAP_THRESHOLD``, which
adapts upward from 128 KiB) with their own ``mmap`` and unmaps them on free,
and it returns the free top of the heap to the kernel above
``M_TRIM_THRESHOLD`` (128 KiB). A 3D U-Net allocates and frees feature maps of
tens to hundreds of MB in every layer, so each layer page-faults its output in
again. On the fixture benchmark (``bench.py``, 2-core AMD EPYC, torch 2.13,
glibc 2.36) raising both thresholds cut the CPU time from 80 s to 47 s.

Raising both thresholds keeps freed memory in the heap for reuse, and
``release_freed_memory`` hands it back after each call. Both settings are
process-wide, so they also apply to allocations of other threads. On a C
library without ``mallopt``/``malloc_trim`` (not glibc) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

logger = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Above the largest feature-map batch of the CPU batch sizes used here (about
# 150 MB for the fixture network at batch 4). Larger allocations still use mmap.
# mallopt takes a C int, so neither value may exceed 2**31 - 1.
MMAP_THRESHOLD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = 1 << 30

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_configured = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process. Return whether they are raised."""
    global _configured
    with _lock:
        if _configured:
            return True
        libc = _load_libc()
        if libc is None:
            return False
        if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
            logger.warning("mallopt rejected the mmap or trim threshold, so CPU inference keeps glibc's defaults")
            return False
        _configured = True
        logger.info(
            "raised glibc's mmap threshold to %d MiB and trim threshold to %d MiB for CPU inference",
            MMAP_THRESHOLD_BYTES >> 20,
            TRIM_THRESHOLD_BYTES >> 20,
        )
        return True


def release_freed_memory() -> None:
    """Return the free heap memory to the kernel (``malloc_trim(0)``) if ``keep_freed_memory`` raised the thresholds."""
    if _configured and _libc is not None:
        _libc.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is not None:
        return _libc
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError as error:
        logger.info("C library %s could not be loaded, so glibc's malloc thresholds stay as they are: %s", name, error)
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        logger.info("C library %s has no mallopt or malloc_trim (not glibc), so its malloc settings stay as they are", name)
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    _libc = libc
    return libc
