# deepnotes: `make run` runs every implemented experiment, `make test` the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: venv run test bench clean

venv: $(STAMP)

# Reinstalls only when the dependency files change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: venv
	$(BIN)/deepnotes run $(ARGS)

test: venv
	$(BIN)/python -m pytest -q $(ARGS)

# The peers some benchmarks compare with (diffusers) are an extra, not a dependency of the library.
bench: venv
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/deepnotes bench $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
