"""Blocks of z, y, x volumes and running a function over them, here or on a Dask cluster.

Tasks read their inputs from and write their outputs to tensorstore volumes on disk, and return
only small summaries, so memory is bounded by the block size whatever the volume's size.

A stage run with :class:`Marks` resumes: each block leaves a completion mark (holding its summary)
once its output is on disk, and a later run computes only the unmarked blocks (daisy's
``check_function``, as files).
"""

from __future__ import annotations

import importlib
import itertools
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from tqdm import tqdm

from segmentation.heap import WORKER_HEAP

Slices = tuple[slice, slice, slice]


def iter_blocks(shape: Sequence[int], block: Sequence[int]) -> Iterator[Slices]:
    """Aligned blocks covering ``shape``; the last block along an axis may be smaller."""
    ranges = [range(0, int(n), int(b)) for n, b in zip(shape, block)]
    for corner in itertools.product(*ranges):
        yield tuple(slice(c, min(c + int(b), int(n))) for c, b, n in zip(corner, block, shape))


def block_count(shape: Sequence[int], block: Sequence[int]) -> int:
    count = 1
    for n, b in zip(shape, block):
        count *= -(-int(n) // int(b))
    return count


@dataclass(frozen=True)
class Block:
    """One block of a volume: its index, grid position and the voxels it owns."""

    index: int
    grid: tuple[int, int, int]
    core: Slices
    shape: tuple[int, int, int]  # of the whole volume

    @property
    def origin(self) -> tuple[int, int, int]:
        return tuple(s.start for s in self.core)

    def grown(self, before: Sequence[int], after: Optional[Sequence[int]] = None) -> Slices:
        """The core widened by a halo, clipped to the volume."""
        after = before if after is None else after
        return tuple(slice(max(0, s.start - b), min(n, s.stop + a))
                     for s, b, a, n in zip(self.core, before, after, self.shape))

    def core_within(self, region: Slices) -> Slices:
        """Where the core lies inside a grown region (for cropping)."""
        return tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(self.core, region))


def make_blocks(shape: Sequence[int], block_shape: Sequence[int]) -> list[Block]:
    shape = tuple(int(s) for s in shape)
    grid_shape = [-(-n // b) for n, b in zip(shape, block_shape)]
    blocks = []
    for index, grid in enumerate(itertools.product(*(range(g) for g in grid_shape))):
        core = tuple(slice(g * b, min((g + 1) * b, n)) for g, b, n in zip(grid, block_shape, shape))
        blocks.append(Block(index, tuple(grid), core, shape))
    return blocks


def read_voxels(block: Block, context: Sequence[int]) -> int:
    """Voxels a block reads with ``context`` around its core (none beyond the volume)."""
    return math.prod(s.stop - s.start for s in block.grown(context))


def context_blocks(shape: Sequence[int], block_shape: Sequence[int], context: Sequence[int]
                   ) -> list[Block]:
    """Blocks for a stage that reads ``context`` voxels around each (a network's input):
    whole multiples of ``block_shape`` per axis that read the fewest voxels in all, none
    reading more than a ``block_shape`` block inside a volume does (the memory a block may
    use). A volume's faces need no context, so a volume a few blocks wide is read in a few
    wide blocks rather than many overlapping ones: the demo in two blocks that read 12.6 M
    voxels instead of eight that read 22 M. The choice depends on the volume and the
    settings only, not on the workers: a model whose reach exceeds its context predicts
    slightly differently in different blocks, and runs on any cluster must agree (and an
    interrupted run resumed with other workers keeps its blocks)."""
    bound = math.prod(int(b) + 2 * int(c) for b, c in zip(block_shape, context))
    smallest = [min(int(n), int(b)) for n, b in zip(shape, block_shape)]
    # multiples whose core alone reads more than the bound cannot fit: pruned up front
    ranges = [[m for m in range(1, -(-int(n) // int(b)) + 1)
               if min(int(n), m * int(b)) * math.prod(smallest) // smallest[i] <= bound]
              for i, (n, b) in enumerate(zip(shape, block_shape))]

    def total(blocks: list[Block]) -> float:
        reads = [read_voxels(b, context) for b in blocks]
        return sum(reads) if max(reads) <= bound else math.inf

    # multiple (1, 1, 1), the plain blocks, always fits; ties go to the first, as listed
    return min((make_blocks(shape, [m * int(b) for m, b in zip(multiple, block_shape)])
                for multiple in itertools.product(*ranges)), key=total)


Save = Callable[[Any, Path], None]  # write a task's result to a (temporary) mark file
Load = Callable[[Path], Any]  # read it back


def save_nothing(result: Any, path: Path) -> None:
    path.write_bytes(b"")


def load_nothing(path: Path) -> None:
    return None


class Marks:
    """Completion marks of one stage's blocks, in ``folder``: one file per finished block.

    ``key`` names everything the stage's output depends on (inputs, settings, model); marks
    left under another key are dropped, so ``fresh`` says the stage's output must be made anew.
    A mark is renamed into place only after the task returned, i.e. after its writes completed
    (tensorstore syncs them), so a killed run never leaves a mark for a half-written block.
    """

    def __init__(self, folder: Path, key: str, save: Save = save_nothing,
                 load: Load = load_nothing):
        self.folder = Path(folder)
        self.key = key
        self.save, self.load = save, load
        key_file = self.folder / "KEY"
        self.fresh = not (key_file.is_file() and key_file.read_text() == key)
        if self.fresh:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            scratch = key_file.with_name("KEY.tmp")
            scratch.write_text(key)
            os.replace(scratch, key_file)
        self.computed = 0
        self.skipped = 0

    def path(self, block: "Block") -> Path:
        return self.folder / f"{block.index}.mark"

    def done(self, block: "Block") -> bool:
        return self.path(block).is_file()

    def complete(self, blocks: Sequence["Block"]) -> bool:
        return all(self.done(b) for b in blocks)

    def finish(self) -> None:
        """Say that every block of the stage is done (for readers that know no block list)."""
        (self.folder / "DONE").touch()

    @property
    def finished(self) -> bool:
        return (self.folder / "DONE").is_file()


class _Marked:
    """fn(block, *args), then the block's mark (picklable: it runs on Dask workers)."""

    def __init__(self, fn: Callable, folder: Path, save: Save):
        self.fn, self.folder, self.save = fn, Path(folder), save

    def __call__(self, block: "Block", *args: Any) -> Any:
        result = self.fn(block, *args)
        final = self.folder / f"{block.index}.mark"
        scratch = self.folder / f"{block.index}.mark.{os.getpid()}.tmp"
        self.save(result, scratch)
        with open(scratch, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(scratch, final)
        return result


def _import_modules(names: Sequence[str]) -> None:
    for name in names:
        importlib.import_module(name)


class Runner:
    """Maps a function over blocks: in this process (``workers=0``), on a local Dask cluster of
    ``workers`` processes, or on an existing cluster at ``scheduler``. The modules in
    ``preload`` are imported on every worker as the cluster starts, not inside the first
    stage's tasks (half a second of imports per worker that otherwise delays one stage).
    The workers of a local cluster keep the memory they free, in one heap (``heap.WORKER_HEAP``,
    in their environment from the start, a restarted worker's too): they are this run's own
    processes, and each block allocates what the last one freed."""

    def __init__(self, workers: int = 0, scheduler: Optional[str] = None,
                 progress: bool = True, preload: Sequence[str] = ()):
        self.workers = workers
        self.scheduler = scheduler
        self.progress = progress
        self.preload = tuple(preload)
        self.client = None
        self._cluster = None

    def __enter__(self) -> "Runner":
        if self.scheduler or self.workers > 0:
            from distributed import Client, LocalCluster

            if self.scheduler:
                self.client = Client(self.scheduler)
            else:
                import dask

                settings = {f"distributed.nanny.pre-spawn-environ.{name}": value
                            for name, value in WORKER_HEAP.items()}
                # no statistical profiler on the workers: it samples the task's stack every
                # 10 ms for a dashboard nobody opens, and cost segment 5% on the demo
                settings["distributed.worker.profile.enabled"] = False
                # nor 50 event-loop health ticks (for the log's "event loop unresponsive" and
                # the dashboard) and 2 system samples a second (for the dashboard, and the
                # memory a worker reports, which no stage here balances by), in the scheduler
                # and every worker: on 2 cores they took CPU the blocks needed (the scheduler's
                # loop 0.41-0.48 s in a 7.7 s stage of 2 workers at 8x the demo, which ran 1.06
                # times as fast with 1 tick a second and a sample every 10 s, four runs each).
                # The memory monitor, which spills and pauses, keeps its pace
                settings["distributed.admin.tick.interval"] = "1s"
                settings["distributed.admin.system-monitor.interval"] = "10s"
                # every port on loopback, none fixed: `dashboard_address=None` still opens the
                # scheduler's web server on port 8787 (dask/distributed#7207), which took the
                # port from a Dask dashboard the user had open, or moved this run's elsewhere.
                # The scheduler and the nannies read the settings as they start
                with dask.config.set(settings):
                    self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                                 processes=True, host="127.0.0.1",
                                                 dashboard_address="127.0.0.1:0",
                                                 silence_logs=40)
                self.client = Client(self._cluster)
            self.client.run(_import_modules, self.preload)
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    @property
    def on_this_machine(self) -> bool:
        """Whether the work runs here: in this process, or on a local cluster of this run's
        own workers (not on an existing cluster at ``scheduler``)."""
        return self.scheduler is None

    @property
    def cores(self) -> Optional[int]:
        """The cores a local cluster was given (its workers); None in this process alone."""
        return self.workers if self._cluster is not None else None

    def here(self) -> "Runner":
        """A runner for the same work in this process, one block after another."""
        return Runner(0, progress=self.progress)

    @property
    def parallelism(self) -> int:
        if self.client is None:
            return 1
        return max(1, sum(self.client.nthreads().values()))

    def imap(self, fn: Callable, blocks: Sequence[Block], *args: Any, desc: str = "",
             marks: Optional[Marks] = None) -> Iterator:
        """fn(block, *args) for every block, yielded as they finish (in any order); each result
        is let go of by the workers once yielded, so results need not all fit at once. With
        ``marks``, blocks marked done yield their saved result instead of running again."""
        if marks is not None:
            done = [b for b in blocks if marks.done(b)]
            blocks = [b for b in blocks if not marks.done(b)]
            marks.skipped, marks.computed = len(done), len(blocks)
            for block in done:
                yield marks.load(marks.path(block))
            fn = _Marked(fn, marks.folder, marks.save)
        bar = tqdm(total=len(blocks), desc=desc, disable=not self.progress, leave=False,
                   unit="block")
        try:
            if self.client is None:
                for block in blocks:
                    yield fn(block, *args)
                    bar.update()
                return
            for _, result in self._as_finished(fn, blocks, args):
                bar.update()
                yield result
        finally:
            bar.close()

    def map(self, fn: Callable, blocks: Sequence[Block], *args: Any, desc: str = "",
            marks: Optional[Marks] = None) -> list:
        """fn(block, *args) for every block; results in block order. With ``marks``, blocks
        marked done give their saved result instead of running again."""
        if marks is not None:
            todo = [b for b in blocks if not marks.done(b)]
            computed = dict(zip((b.index for b in todo),
                                self.map(_Marked(fn, marks.folder, marks.save), todo, *args,
                                         desc=desc)))
            marks.skipped, marks.computed = len(blocks) - len(todo), len(todo)
            return [computed[b.index] if b.index in computed else marks.load(marks.path(b))
                    for b in blocks]
        bar = tqdm(total=len(blocks), desc=desc, disable=not self.progress, leave=False,
                   unit="block")
        try:
            if self.client is None:
                results = []
                for block in blocks:
                    results.append(fn(block, *args))
                    bar.update()
                return results
            results: list = [None] * len(blocks)
            for index, result in self._as_finished(fn, blocks, args):
                results[index] = result
                bar.update()
            return results
        finally:
            bar.close()

    def _as_finished(self, fn: Callable, blocks: Sequence[Block], args: tuple
                     ) -> Iterator[tuple[int, Any]]:
        """(position in ``blocks``, result) of each block on the cluster as it finishes. Each
        result leaves its worker as it arrives (kept there until the last block, a worker's
        memory grew with the volume: seed faces, 0.8 MB a block), and a failed block, or a
        caller that stops reading, cancels the others."""
        from distributed import as_completed

        # one message for the stage's tasks, and results that come with their completion:
        # a map of 8 no-op blocks took 33 ms when each task was submitted and fetched alone
        futures = self.client.map(fn, blocks, *([arg] * len(blocks) for arg in args),
                                  pure=False)
        position = {future.key: i for i, future in enumerate(futures)}
        try:
            for future, result in as_completed(futures, with_results=True):
                if future.status != "finished":  # cancelled (by another client, a lost
                    future.result()  # scheduler): comes as a result, raises here
                future.release()
                yield position[future.key], result
        except BaseException:
            self.client.cancel(futures)
            raise


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)

