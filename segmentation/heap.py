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
"""

from __future__ import annotations

import ctypes

FROM_HEAP_UP_TO = 32 * 2 ** 20  # the most glibc accepts
KEEP_FREE = 128 * 2 ** 20
M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3

# the same and one heap, for a worker about to start: glibc reads these as it loads
WORKER_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(FROM_HEAP_UP_TO),
               "MALLOC_TRIM_THRESHOLD_": str(KEEP_FREE), "MALLOC_ARENA_MAX": "1"}


def keep_freed_memory() -> bool:
    """Serve arrays up to 32 MB from this process's heap and keep its freed memory; False
    where the C library is not glibc (there is nothing to tune)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    results = [mallopt(M_MMAP_THRESHOLD, FROM_HEAP_UP_TO), mallopt(M_TRIM_THRESHOLD, KEEP_FREE)]
    return all(results)
