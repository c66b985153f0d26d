# One entry point for the README's commands. Each target sets itself up on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= demo-out
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint docs bench install install-test clean

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## The main job on the bundled demo: synthetic world + tiny model -> $(OUT)/report/report.html
demo: $(VENV)/.installed
	$(VENV)/bin/explainkit demo --out $(OUT)

## The default test suite (tiny models, synthetic data; about 12 minutes on 2 cores)
test: $(VENV)/.installed-test
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

$(VENV)/.installed-ray: $(VENV)/.installed-test
	$(PIP) install -q -c constraints.txt -e ".[test,ray]"
	touch $@

## Heavier checks (multi-seed validations, torchrun and Ray backends)
test-slow: $(VENV)/.installed-ray
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -m slow $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .

## Rewrite the generated parameter tables of docs/*.md from the plugins' declarations
docs: $(VENV)/.installed
	$(PY) -m explainkit.cli.docs

bench: $(VENV)/.installed-test
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info demo-out tests/artifacts
