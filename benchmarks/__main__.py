"""`python -m benchmarks [NAME ...]` (or `make bench`): run the named benchmarks, or all of
them; each prints its figures and writes `benchmarks/results/NAME.json`."""

import importlib
import sys
from typing import Sequence

from benchmarks.common import write_result

ALL = ["import_throughput", "chunk_serving", "page_load", "rag_load", "segmentation",
       "edit_latency", "supervoxel_split", "models", "proofreading"]
ON_REQUEST = ["edit_to_pixels",  # minutes of a headless browser: run by name
              "agglomeration", "focused", "agglomeration_speed",  # need the segmented demo project
              "executors"]  # 15 minutes: the pipeline on Dask against a plain process pool


def unknown(names: Sequence[str]) -> str:
    """What is wrong with the names asked for, or '' when nothing is."""
    wrong = sorted(set(names) - set(ALL + ON_REQUEST))
    return f"unknown benchmark(s) {', '.join(wrong)}; available: {', '.join(ALL + ON_REQUEST)}" \
        if wrong else ""


def main(names: Sequence[str] = ()) -> int:
    if unknown(names):
        print(unknown(names), file=sys.stderr)
        return 2
    for name in names or ALL:
        print(f"== {name}")
        write_result(name, importlib.import_module(f"benchmarks.{name}").run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
