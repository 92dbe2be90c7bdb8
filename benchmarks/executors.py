"""The segmentation pipeline on its Dask runner against the same pipeline on a plain process pool,
on 1 and 2 workers, at the demo's size (1x) and tiled 2 x 2 x 2 (8x).

It asks what 2 workers against one can reach on this machine with the pipeline's own block
tasks, and what Dask's local cluster costs on top. The pool (``PoolRunner``, a spawned
``multiprocessing`` pool that hands out one block at a time) exists only here: it has no
scheduler, no event loops and no TCP, so its speed-up is about as far as the tasks and the
serial steps between stages allow, and the gap to Dask is the local cluster's cost. Its
processes start with the environment Dask's workers get (the nannies' and ``heap.WORKER_HEAP``).

Affinities are predicted once at 1x, as in ``benchmarks.segmentation``; every measured run is a
fresh process that reuses them. Runs alternate executor and worker count over ``ROUNDS``
rounds (after one run that is not counted); each round's 1-worker run against its 2-worker run
gives a ratio, and the median ratio is reported. ``PROMPTCUT_BENCH_SCALES=1`` runs the 1x part
only. Run by name: `python -m benchmarks executors` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from benchmarks.common import RESULTS
from benchmarks.segmentation import (GOALS, bench_scales, predicted_demo, sampled_run, speedup,
                                     tile_project)
from segmentation.blockwise import Block, Runner, _import_modules

EXECUTORS = ("dask", "pool")
ROUNDS = {"1x": 5, "8x": 3}

RUN_SNIPPET = """
import json, sys
from benchmarks.executors import run_pipeline
print(json.dumps(run_pipeline(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
"""


def _start_process(preload: Sequence[str], started) -> None:
    """Import what a Dask worker preloads, then wait until every process of the pool has: no
    process's imports fall into the first stage's time (as ``client.run`` waits for all)."""
    _import_modules(preload)
    started.wait()


def _indexed(job: tuple) -> tuple[int, Any]:
    """One block's result with its position (``Runner._as_finished``'s contract)."""
    fn, args, position, block = job
    return position, fn(block, *args)


class PoolRunner(Runner):
    """A Runner whose blocks go to a pool of ``workers`` spawned processes, not to Dask."""

    def __enter__(self) -> "PoolRunner":
        import dask
        import distributed  # noqa: F401 (importing it loads the Dask settings read below)

        from segmentation.heap import WORKER_HEAP

        # what Dask's nannies give their workers (one thread for OpenMP and BLAS, the hash
        # seed) and the pipeline's allocator settings; each process's C library reads them
        # as it starts
        environment = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **WORKER_HEAP}
        os.environ.update({name: str(value) for name, value in environment.items()})
        context = multiprocessing.get_context("spawn")
        started = context.Barrier(self.workers)
        self._pool = context.Pool(self.workers, initializer=_start_process,
                                  initargs=(self.preload, started))
        self._pool.map(abs, range(self.workers), chunksize=1)  # returns once all started
        self.client = self._pool  # not None: map and imap take the cluster path
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self._pool.close()
        else:  # a failed block, or a caller that stopped reading: drop the queued blocks
            self._pool.terminate()
        self._pool.join()
        self.client = None

    @property
    def parallelism(self) -> int:
        return self.workers

    @property
    def cores(self) -> int:
        return self.workers

    def _as_finished(self, fn: Callable, blocks: Sequence[Block], args: tuple
                     ) -> Iterator[tuple[int, Any]]:
        jobs = [(fn, args, i, block) for i, block in enumerate(blocks)]
        yield from self._pool.imap_unordered(_indexed, jobs, chunksize=1)


def run_pipeline(config_path: str, executor: str, workers: int) -> dict:
    """One segment run reusing the project's affinities (in a process of its own)."""
    from promptcut.config import load_config
    from promptcut.segmenting import pipeline_params
    from promptcut.setup_project import prepare_project
    from segmentation.heap import keep_freed_memory
    from segmentation.pipeline import segment

    keep_freed_memory()  # as `promptcut segment` does
    config = load_config(config_path)
    project = prepare_project(config, progress=False)
    kind = PoolRunner if executor == "pool" else Runner
    with kind(workers, progress=False, preload=("segmentation.pipeline",)) as runner:
        report = segment(project, None, pipeline_params(config), runner, progress=False)
    return {"seconds": {k: round(v, 3) for k, v in report.seconds.items()},
            "segmentation_seconds": round(report.segmentation_seconds, 3)}


def timed_run(config: Path, executor: str, workers: int) -> dict:
    """``run_pipeline`` in a fresh process, sampled for memory."""
    return sampled_run([sys.executable, "-c", RUN_SNIPPET, str(config), executor, str(workers)],
                       f"{config.parent.name} {executor} {workers}")


def measure(config: Path, rounds: int) -> dict:
    """Every executor on 1 and 2 workers, ``rounds`` times, in alternating orders."""
    runs: dict = {f"{e}_{w}": [] for e in EXECUTORS for w in (1, 2)}
    timed_run(config, "dask", 2)  # not counted: the first run after the prediction, or after
    # writing the tiled volume, is slowed while the system settles its freed memory and files
    for index in range(rounds):
        flip = index % 2 == 1
        for executor in EXECUTORS[::-1] if flip else EXECUTORS:
            for workers in (2, 1) if flip else (1, 2):
                runs[f"{executor}_{workers}"].append(timed_run(config, executor, workers))
    found: dict = {"runs": runs}
    for executor in EXECUTORS:
        pairs = [speedup(one, two) for one, two in zip(runs[f"{executor}_1"],
                                                       runs[f"{executor}_2"])]
        found[f"speedup_2_vs_1_{executor}"] = statistics.median(pairs)
        found[f"speedup_2_vs_1_{executor}_rounds"] = pairs
        found[f"seconds_2_workers_{executor}"] = round(statistics.median(
            r["segmentation_seconds"] for r in runs[f"{executor}_2"]), 3)
    found["dask_vs_pool_seconds_2_workers"] = round(
        found["seconds_2_workers_dask"] / found["seconds_2_workers_pool"], 3)
    return found


def run() -> dict:
    """Predict the demo's affinities once, tile them for 8x, and measure both scales."""
    figures: dict = {"load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as scratch:
        one = Path(scratch) / "x1"
        predicted_demo(one)
        folders = {"1x": one}
        if 8 in bench_scales():
            folders["8x"] = tile_project(one / "project", Path(scratch) / "x8")
        for scale, folder in folders.items():
            figures[scale] = measure(folder / "config.yaml", ROUNDS[scale])
    figures["goal_speedup_2_vs_1"] = GOALS["speedup_2_vs_1"]
    figure(figures)
    return figures


def figure(figures: dict) -> None:
    """Each round's 2-against-1 speed-up per executor and scale, beside the goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [s for s in ("1x", "8x") if s in figures]
    fig, ax = plt.subplots(figsize=(6, 4))
    for offset, executor in zip((-0.15, 0.15), EXECUTORS):
        for i, scale in enumerate(scales):
            rounds = figures[scale][f"speedup_2_vs_1_{executor}_rounds"]
            ax.scatter([i + offset] * len(rounds), rounds, color="C0" if executor == "dask"
                       else "C1", label=executor if i == 0 else None)
    ax.axhline(figures["goal_speedup_2_vs_1"], color="black", linestyle="--", label="goal")
    ax.set_xticks(range(len(scales)), scales)
    ax.set_ylabel("2 workers against 1 (each round)")
    ax.set_title("supervoxels + RAG + agglomeration: Dask or a process pool")
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "executors.png", dpi=110)
    plt.close(fig)
