PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
# Two stamps: `run` needs the runtime dependencies only; `test` (and lint, bench) the dev extras too. The dev
# install also satisfies `run`, and `run` then `test` upgrades the venv to the dev extras.
RUNSTAMP := $(VENV)/.installed-run
DEVSTAMP := $(VENV)/.installed-dev
DEPS     := pyproject.toml simcore/native/refkernels.c

.PHONY: install install-dev run test bench lint format clean

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

$(RUNSTAMP): $(DEPS) | $(VPY)
	$(VPY) -m pip install -q -e .
	$(VPY) -m simcore.native build
	touch $(RUNSTAMP)

$(DEVSTAMP): $(DEPS) | $(VPY)
	$(VPY) -m pip install -q -e '.[dev]'
	$(VPY) -m simcore.native build
	touch $(DEVSTAMP) $(RUNSTAMP)

install: $(RUNSTAMP)

install-dev: $(DEVSTAMP)

run: $(RUNSTAMP)
	$(VENV)/bin/simcore run configs/experiments/quickstart.yaml

test: $(DEVSTAMP)
	$(VPY) -m pytest

bench: $(DEVSTAMP)
	$(VPY) -m benchmarks
	$(VPY) -m benchmarks.compare

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEVSTAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info
