# README command 1: make demo   — set up, then compress the example teacher and print the report
#                  make demo-detect — the same for the example detector (mAP on both runtimes)
# README command 2: make test   — set up, then run the test suite (fast tier, what CI runs)
#                  make test-slow — the slow tier: adversarial games, torchrun, kill-and-resume (pytest -m slow)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup demo demo-detect test test-slow bench clean

setup: $(VENV)/.setup-stamp $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

# constraints-cpu.txt pins the CPU build of torch (pyproject keeps ranges for users).
$(VENV)/.setup-stamp: pyproject.toml constraints-cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/edgekd compress --config examples/demo.yaml

data/fmnist-det/README.txt: examples/make_fmnist_detection.py | $(VENV)/.setup-stamp $(FMNIST)
	$(PY) examples/make_fmnist_detection.py --out data/fmnist-det

demo-detect: setup data/fmnist-det/README.txt
	$(VENV)/bin/edgekd compress --config examples/demo-detect.yaml

test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/int8_speed_accuracy.py
	$(PY) benchmarks/kd_vs_labels.py

clean:
	rm -rf runs .pytest_cache
