"""A process that keeps freed memory (segmentation.heap) gets block-sized arrays from the heap
and holds on to them when they are freed, where by default each goes back to the kernel."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# the start of the scripts that measure a fresh process's resident memory
RESIDENT = """
import sys
import numpy as np
from segmentation.heap import holding_freed_memory, keep_freed_memory

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20

"""

RESIDENT_AFTER_FREE = RESIDENT + """
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = resident_mb()
blocks = [np.ones(20 * 2 ** 20, np.uint8) for _ in range(5)]  # five 20 MB arrays, touched
del blocks
print(resident_mb() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_freed_blocks_stay_in_a_process_that_keeps_them():
    from segmentation.heap import WORKER_HEAP

    # Dask's nannies copy their workers' settings into the environment of the process that
    # starts them (this one, once an earlier test ran a local cluster): leave them out
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def held(mode: str, environment: dict) -> float:
        out = subprocess.run([sys.executable, "-c", RESIDENT_AFTER_FREE, mode], check=True,
                             capture_output=True, text=True,
                             env={**clean, **environment}).stdout
        return float(out.strip().splitlines()[-1])

    dask_workers = {"MALLOC_TRIM_THRESHOLD_": "65536"}  # what Dask gives its workers
    assert held("default", {}) < 30  # returned to the kernel when freed
    assert held("default", dask_workers) < 30
    assert held("keep", dask_workers) > 80  # still the process's, for the next block
    assert held("default", WORKER_HEAP) > 80


THREADS_FREE_IN_TURN = """
import threading
import numpy as np

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20

turns = [threading.Event() for _ in range(5)]
done = threading.Barrier(4)

def work(i):  # all four threads alive at once, each with a first allocation of its own
    np.zeros(1024)
    turns[i].wait()
    block = np.ones(24 * 2 ** 20, np.uint8)  # touched, then freed: kept by the heap
    del block
    turns[i + 1].set()
    done.wait()

before = resident_mb()
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
turns[0].set()
for t in threads:
    t.join()
print(resident_mb() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_a_worker_keeps_what_its_threads_free_in_one_heap():
    """Threads that allocate in turn reuse one heap's freed memory in a worker; with a heap per
    thread (glibc's default) each keeps its own 24 MB (arrays up to 32 MB come from the heaps)."""
    from segmentation.heap import WORKER_HEAP

    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def held(environment: dict) -> float:
        out = subprocess.run([sys.executable, "-c", THREADS_FREE_IN_TURN], check=True,
                             capture_output=True, text=True,
                             env={**clean, **environment}).stdout
        return float(out.strip().splitlines()[-1])

    per_thread = {k: v for k, v in WORKER_HEAP.items() if k != "MALLOC_ARENA_MAX"}
    assert held(per_thread) > 80  # four heaps of 24 MB
    assert 15 < held(WORKER_HEAP) < 50  # one


def test_local_dask_workers_start_with_the_setting():
    """The workers a run starts have it from their first allocation (Dask would give them
    MALLOC_TRIM_THRESHOLD_=65536 otherwise), a worker the nanny restarts too."""
    from segmentation.blockwise import Runner
    from segmentation.heap import WORKER_HEAP

    with Runner(1, progress=False) as runner:
        found = runner.client.run(lambda: {k: os.environ.get(k) for k in WORKER_HEAP})
        runner.client.restart()
        again = runner.client.run(lambda: {k: os.environ.get(k) for k in WORKER_HEAP})
    assert list(found.values()) == [WORKER_HEAP] and list(again.values()) == [
        WORKER_HEAP]


HELD_UNTIL_LET_GO = RESIDENT + """
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = resident_mb()
with holding_freed_memory() as holding:
    activation = np.ones(200 * 2 ** 20, np.uint8)  # beyond what glibc serves from heaps
    del activation
    held = resident_mb() - before
print(holding, held, resident_mb() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_a_model_stage_keeps_its_large_arrays_until_it_lets_go():
    """While the affinity model calibrates, arrays of any size come from the heap and stay
    there when freed (the next layer reuses them); afterwards they go back to the kernel. A
    process that does not keep freed memory is left as it is."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def resident(mode: str) -> tuple[bool, float, float]:
        out = subprocess.run([sys.executable, "-c", HELD_UNTIL_LET_GO, mode], check=True,
                             capture_output=True, text=True, env=clean).stdout
        holding, held, after = out.strip().splitlines()[-1].split()
        return holding == "True", float(held), float(after)

    holding, held, after = resident("keep")
    assert holding and held > 150 and after < 50
    holding, held, _ = resident("default")
    assert not holding and held < 50  # mapped, and unmapped as it is freed
