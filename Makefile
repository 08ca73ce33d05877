# rlhfkit: `make demo` and `make test` create (or reuse) .venv themselves.
#
# torch is pinned here and only here. The default is the CPU build this project's machines carry.
# GPU users override it, e.g.:
#   make demo TORCH_INSTALL="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# (or install torch into .venv first: a torch that satisfies pyproject's range is kept as it is).
PYTHON ?= python3
VENV ?= .venv
TORCH_INSTALL ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlhfkit-installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_INSTALL)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhfkit demo --output demo-output

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: $(STAMP) lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) demo-output .pytest_cache
