# Two entry points (see README): `make reproduce` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STUDY  ?= params/default.yaml

.PHONY: install reproduce test notebooks-sync clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

reproduce: $(STAMP)
	$(BIN)/mmlib batch $(STUDY)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Regenerate each notebooks/*.ipynb from its percent-format .py twin (the .py is the source).
notebooks-sync: $(STAMP)
	$(BIN)/jupytext --update --to ipynb notebooks/*.py

clean:
	rm -rf outputs/datasets outputs/features outputs/runs outputs/notebooks outputs/tables outputs/figures
