"""A process that keeps freed memory (segmentation.heap) gets block-sized arrays from the heap
and holds on to them when they are freed, where by default each goes back to the kernel."""

from __future__ import annotations

import subprocess
import sys

import pytest

RESIDENT_AFTER_FREE = """
import sys
import numpy as np
from segmentation.heap import keep_freed_memory

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20

if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = resident_mb()
blocks = [np.ones(20 * 2 ** 20, np.uint8) for _ in range(5)]  # five 20 MB arrays, touched
del blocks
print(resident_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_freed_blocks_stay_in_a_process_that_keeps_them():
    def held(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", RESIDENT_AFTER_FREE, mode], check=True,
                             capture_output=True, text=True).stdout
        return float(out.strip().splitlines()[-1])

    assert held("default") < 30  # returned to the kernel when freed
    assert held("keep") > 80  # still the process's, for the next block
