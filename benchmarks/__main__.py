"""`python -m benchmarks [NAME ...]`: run the named benchmarks, or all of them."""

import importlib
import sys

from benchmarks.common import write_result

ALL = ["import_throughput", "chunk_serving", "page_load", "rag_load", "segmentation",
       "edit_latency", "models"]

if __name__ == "__main__":
    for name in sys.argv[1:] or ALL:
        print(f"== {name}")
        write_result(name, importlib.import_module(f"benchmarks.{name}").run())
