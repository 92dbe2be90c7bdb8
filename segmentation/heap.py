"""Keeping freed block-sized arrays in a process that will allocate the same sizes again.

Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also switches off glibc's
dynamic mmap threshold: every allocation over 128 kB then gets its own mapping and goes back to
the kernel when freed. On a virtual machine that hands free guest memory back to its host
(Firecracker's free page reporting, as on the machines this project is measured on), touching
such memory again costs a fault to the host: 786 MB first touched in 3.4 s, then 0.15 s. A
pipeline worker allocates block-sized arrays (a 140^3 block of uint64 seeds is 22 MB) over and
over, and paid that every time. Here arrays up to 32 MB (glibc's own ceiling for the dynamic
threshold) come from the heap, and the heap's top is returned only beyond 128 MB free. On the
demo, supervoxels + RAG + agglomeration ran at 3.6-4.2 Mvox/s on 2 workers instead of
2.35-2.6 (three runs each). Only processes that do one bulk job use this: `promptcut segment`
(``keep_freed_memory``) and the local workers it starts (``WORKER_HEAP``, their environment).

A worker also keeps a single heap (``MALLOC_ARENA_MAX=1``). It runs one task at a time, but
tensorstore's threads and Dask's each allocate from a heap of their own, and every heap kept
what its thread had freed: a worker's resident memory grew with the number of blocks it had
done (on 1 worker, 490 MB at the demo's size and 600-650 MB at 8x, where one heap held 230-410
MB), at the same speed.

A model's forward pass allocates arrays far beyond 32 MB (a 3D U-Net's activations: hundreds
of MB each), which glibc always maps afresh, and frees them layer by layer. While the affinity
model calibrates (``holding_freed_memory``), `segment` serves those from its heap too and keeps
all it frees, then gives it back: a 112^3 calibration crop took 1.4 s instead of 2.7 s (one
process, 2 threads). Keeping only 128 MB at the heap's top kept barely half of that gain. The
affinity blocks, which `segment` predicts in its own process too (see ``compute_affinities``),
hold one block at a time: a 6.3 M-voxel block of the demo took 4.9-7.3 s instead of 8.6-9.3 s
on 2 threads. Workers do not hold: there two blocks at once fought over the machine's memory,
and holding gained 2 s in a 26 s stage for 2 GB more per worker.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Iterator, Optional

FROM_HEAP_UP_TO = 32 * 2 ** 20  # the most glibc accepts
KEEP_FREE = 128 * 2 ** 20
M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
GLIBC_MMAP_MAX = 65536  # glibc's default number of mappings
KEEP_ALL = 2 ** 31 - 1  # the highest trim threshold mallopt takes (an int)

# the same and one heap, for a worker about to start: glibc reads these as it loads
WORKER_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(FROM_HEAP_UP_TO),
               "MALLOC_TRIM_THRESHOLD_": str(KEEP_FREE), "MALLOC_ARENA_MAX": "1"}


class _Settings:
    """Whether this process keeps freed memory (``keep_freed_memory``): the C library's
    allocator settings are the process's, and holding must not leave them changed in a
    process that never asked for them (a test runner, a benchmark's server)."""

    kept = False


def _libc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # glibc's, or not glibc
        return libc
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None


def keep_freed_memory() -> bool:
    """Serve arrays up to 32 MB from this process's heap and keep its freed memory; False
    where the C library is not glibc (there is nothing to tune)."""
    libc = _libc()
    if libc is None:
        return False
    _Settings.kept = all([libc.mallopt(M_MMAP_THRESHOLD, FROM_HEAP_UP_TO),
                          libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREE)])
    return _Settings.kept


@contextlib.contextmanager
def holding_freed_memory() -> Iterator[bool]:
    """In a process that keeps freed memory, serve every array from its heap and keep all that
    is freed for the length of a block of code, then give the heap's free memory back to the
    kernel; elsewhere, nothing. Yields whether it holds."""
    libc = _libc() if _Settings.kept else None
    holding = libc is not None and all([libc.mallopt(M_MMAP_MAX, 0),
                                        libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL)])
    try:
        yield holding
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREE)
            libc.malloc_trim(0)
