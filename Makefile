VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLES ?= ../shared/data/faces/lfw_colour

.PHONY: install test run down bench clean

$(STAMP): pyproject.toml requirements/*.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: install
	$(VENV)/bin/pytest

run: install
	$(VENV)/bin/biofleet up
	$(VENV)/bin/biofleet demo --samples "$(SAMPLES)"
	$(VENV)/bin/biofleet status

down:
	$(VENV)/bin/biofleet down

# OpenMP threads that spin-wait for a core another process holds slow PyTorch down several times
# on a busy machine; passive waiting costs little on an idle one (bench/README.md).
bench: export OMP_WAIT_POLICY ?= PASSIVE
bench: install
	$(PY) -m bench.model
	$(PY) -m bench.batching
	$(PY) -m bench.photos_stack
	$(PY) -m bench.load
	$(PY) -m bench.coldstart
	bench/gpu.sh --device cpu
	$(PY) -m bench.summary

clean:
	rm -rf $(VENV) .biofleet
