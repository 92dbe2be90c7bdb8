"""Keeping freed memory in a process that will allocate the same sizes again.

glibc gives every allocation over 32 MB its own mapping and returns it to the kernel when it is
freed; on a virtual machine that hands free guest memory back to its host (Firecracker's free
page reporting, as on the machines this project is measured on), touching such memory again
costs a fault to the host: 786 MB first touched in 3.4 s, then 0.15 s. A pipeline worker
allocates block-sized arrays over and over, so it pays that again and again. Served from the
heap and never trimmed, the memory stays the process's: on the demo, supervoxels + RAG +
agglomeration ran at 3.4-3.6 Mvox/s on 2 workers instead of 2.4-2.6 (three runs each,
alternating). The price is that a process keeps its peak memory until it exits, so only
processes that do one bulk job call this: `promptcut segment` and its Dask workers.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_MAX = -4
NEVER_TRIM = 2 ** 31 - 1  # mallopt takes an int: trim only a free top of the heap over 2 GB


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed memory in this process; False
    where the C library is not glibc (there is nothing to tune)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
