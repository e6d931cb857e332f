# Two entry points for a fresh machine: `make demo` and `make test`.
# `make demo` creates .venv (once) with vox2vox and its runtime dependencies; `make test` adds the
# test tools (pytest, ruff, the optional extras the tests exercise, build, mkdocs).
#
# The torch build: TORCH is the pip requirement, TORCH_INDEX the package index it comes from.
# Left empty, pip's own index gives the CPU build on Linux; for a GPU name PyTorch's index:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cu124    (CUDA 12.4)
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/rocm6.2  (ROCm 6.2)
# Torch is installed first and vox2vox after it, so the build chosen here is kept.
# A different TORCH or TORCH_INDEX on an existing .venv needs `make clean` first.
PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
BIN         := $(VENV)/bin
RUNTIME     := $(VENV)/.vox2vox-runtime
TESTTOOLS   := $(VENV)/.vox2vox-test-tools

.PHONY: demo test lint docs dist prior clean

$(RUNTIME): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

$(TESTTOOLS): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(TESTTOOLS)

# The demo's folder is its own output: a rerun replaces it.
demo: $(RUNTIME)
	rm -rf vox2vox-demo
	$(BIN)/vox2vox demo --out vox2vox-demo

# Debian packages some tests need (headless Chromium, OpenGL for off-screen 3D renders).
test: $(TESTTOOLS)
	bash .ci/system-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: $(TESTTOOLS)
	$(BIN)/ruff check src tests benchmarks

# The reference manual, into site/ (strict: a broken link or a stale page is an error).
docs: $(TESTTOOLS)
	$(BIN)/mkdocs build --strict

# A wheel and an sdist in dist/, to install elsewhere: pip install dist/vox2vox-*.whl
dist: $(TESTTOOLS)
	$(BIN)/python -m build --outdir dist

# The shipped brain-tumour prior (docs/prior.md): train it on randomised scans (6000 steps, about
# 70 minutes on an idle 2-core AVX-512 CPU with bf16; PRIOR_AMP=off on CPUs without native bf16),
# score it zero-shot on the shared real cases into its card, and ship the pair in the package.
PRIOR_AMP ?= bf16
prior: $(TESTTOOLS)
	rm -rf build/prior
	$(BIN)/vox2vox prior --out build/prior --steps 6000 --seed 0 --amp $(PRIOR_AMP)
	$(BIN)/python benchmarks/prior_zero_shot.py --model build/prior/brain-tumour.safetensors \
		--out build/prior/zero-shot --card build/prior/brain-tumour.json
	cp build/prior/brain-tumour.safetensors build/prior/brain-tumour.json src/vox2vox/model/shipped/

clean:
	rm -rf $(VENV) vox2vox-demo .pytest_cache site build dist
