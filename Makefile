# Two entry points: `make demo` (open the demo volume in neuroglancer) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/demo.yaml

# Keep the CPU build of torch: the constraints reach sam2's sdist build only through
# PIP_CONSTRAINT, and SAM2_BUILD_CUDA=0 skips its CUDA extension.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export SAM2_BUILD_CUDA := 0

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/promptcut segment --config $(CONFIG) --if-needed
	$(BIN)/promptcut serve --config $(CONFIG)

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
