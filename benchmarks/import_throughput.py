"""Import throughput: the demo's EM and supervoxels into precomputed and zarr, in MB/s."""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import DEMO_H5, write_result
from segmentation.importer import import_volume
from segmentation.stacks import open_stack


def run(repeats: int = 3) -> dict:
    figures = {}
    with tempfile.TemporaryDirectory() as scratch:
        for key, kind in (("raw", "image"), ("supervoxels", "segmentation")):
            for fmt in ("precomputed", "zarr"):
                best = None
                for i in range(repeats):
                    with open_stack(DEMO_H5, key) as stack:
                        report = import_volume(stack, Path(scratch) / f"{key}-{fmt}-{i}", kind,
                                               fmt=fmt, progress=False)
                    if best is None or report.seconds < best.seconds:
                        best = report
                base_mb = best.shape[0] * best.shape[1] * best.shape[2] * \
                    (1 if kind == "image" else 8) / 1e6
                figures[f"{key}->{fmt}"] = {
                    "seconds": round(best.seconds, 3),
                    "scales": len(best.scales),
                    "written_MB": round(best.bytes_written / 1e6, 1),
                    "written_MB_per_s": round(best.megabytes_per_second, 1),
                    "base_scale_MB_per_s": round(base_mb / best.seconds, 1),
                }
    return {"input": str(DEMO_H5.name), "best_of": repeats, "results": figures}


if __name__ == "__main__":
    write_result("import_throughput", run())
