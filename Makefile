# The two commands (see README): `make run` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CONFIG ?= configs/tiny.yaml
ARGS ?=

.PHONY: run test plan lint setup browser

setup: $(STAMP)

# torch is pinned through constraints.txt so a CPU-only machine gets the CPU build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/z2h run $(CONFIG) $(ARGS)

plan: $(STAMP)
	$(VENV)/bin/z2h plan $(CONFIG) $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

# Chromium for the UI browser test (Debian's package via apt-get; the test also installs it when missing).
browser: $(STAMP)
	$(VENV)/bin/python tests/browser.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
