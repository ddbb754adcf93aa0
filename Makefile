PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install run test bench lint format clean

$(STAMP): pyproject.toml simcore/native/refkernels.c
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	$(VPY) -m simcore.native build
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/simcore run configs/experiments/quickstart.yaml

test: $(STAMP)
	$(VPY) -m pytest

bench: $(STAMP)
	$(VPY) -m benchmarks
	$(VPY) -m benchmarks.compare

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info
