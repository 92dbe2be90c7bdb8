#!/usr/bin/env python3
"""Open a project in neuroglancer: `python run_viewer.py --config configs/demo.yaml`."""

import sys

from promptcut.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
