# Two commands for a new user: `make demo` and `make test`. Each installs first when
# .venv is missing (or pyproject.toml changed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo

.PHONY: install demo test unit clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else "Python 3.11 or 3.12 is needed (found %d.%d); run: make PYTHON=python3.11" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	$(PY) -c 'from data.spark import ensure_java; print("java:", ensure_java())'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo --out $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

unit: $(STAMP)  # the pure parts only (tests/unit): seconds
	$(PY) -m pytest -q tests/unit

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
