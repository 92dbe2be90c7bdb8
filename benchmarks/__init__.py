"""Speed measurements. Each module prints its figures and writes benchmarks/results/<name>.json."""
