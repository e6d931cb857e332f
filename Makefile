# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv (once) and installs vox2vox with everything it needs.
PYTHON ?= python3
VENV   ?= .venv
# A pinned torch: on CPU-only machines this is the CPU wheel; set TORCH=torch==<ver>+cu124 etc. for GPUs.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vox2vox-installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The demo's folder is its own output: a rerun replaces it.
demo: $(STAMP)
	rm -rf vox2vox-demo
	$(BIN)/vox2vox demo --out vox2vox-demo

# Debian packages some tests need (headless Chromium, OpenGL for off-screen 3D renders).
test: $(STAMP)
	bash .ci/system-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) vox2vox-demo .pytest_cache
