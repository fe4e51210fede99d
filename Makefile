VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLES ?= ../shared/data/faces/lfw_colour
GPU_VENV := .gpu-venv
GPU_STAMP := $(GPU_VENV)/.installed
BUNDLE := bench/gpu-bundle/manifest.json

.PHONY: install lint tools test run down bench gpu-bundle gpu-rehearsal clean

$(STAMP): pyproject.toml requirements/*.txt biofleet_client/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Lint and format check (ruff), types (mypy on api/, shared/, worker/, the client), import rules (import-linter).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# promtool and prometheus (Debian package prometheus) for the monitoring tests; without apt (or
# root) those tests skip and say why.
tools:
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
		|| echo "prometheus not installed: the monitoring tests will skip"; \
	else echo "no apt-get as root: promtool/prometheus missing, the monitoring tests will skip"; fi

test: lint tools
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
bench: install $(BUNDLE)
	$(PY) -m bench.model
	$(PY) -m bench.batching
	$(PY) -m bench.photos_stack
	$(PY) -m bench.load
	$(PY) -m bench.coldstart
	bench/gpu.sh --device cpu
	$(PY) -m bench.summary

# The models, real chips and photos the GPU host lacks, in bench/gpu-bundle/ (under 64 MiB).
gpu-bundle: install
	$(PY) -m bench.gpu.bundle

$(BUNDLE): | $(STAMP)
	$(PY) -m bench.gpu.bundle

# A venv with only what the GPU host has (requirements/gpu-host.txt).
$(GPU_STAMP): requirements/gpu-host.txt
	test -x $(GPU_VENV)/bin/python || python3 -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements/gpu-host.txt
	touch $(GPU_STAMP)

# The GPU run on the CPU, in that venv, from the bundle alone (never ../shared).
gpu-rehearsal: export OMP_WAIT_POLICY ?= PASSIVE
gpu-rehearsal: $(GPU_STAMP) $(BUNDLE)
	$(GPU_VENV)/bin/python bench/gpu/bare.py
	env -u BIOFLEET_FACES_DIR PYTHON=$(GPU_VENV)/bin/python bench/gpu.sh --device cpu \
		--out bench/results/gpu-rehearsal.json

clean:
	rm -rf $(VENV) $(GPU_VENV) .biofleet
