"""What every benchmark shares: where the data is, how results are written, percentiles."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("PROMPTCUT_SHARED_DATA", REPO.parent / "shared" / "data"))
DEMO_H5 = SHARED_DATA / "neuroproof_ts2_dev.h5"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def percentiles(samples_ms: list[float]) -> dict:
    values = np.asarray(samples_ms, float)
    return {"n": int(values.size), "p50_ms": round(float(np.percentile(values, 50)), 3),
            "p95_ms": round(float(np.percentile(values, 95)), 3),
            "max_ms": round(float(values.max()), 3)}


def write_result(name: str, figures: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "machine": machine(), **figures}
    path.write_text(json.dumps(payload, indent=2))
    print(json.dumps(figures, indent=2))
    print(f"-> {path}")
    return path
