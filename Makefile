# Two entry points: `make demo` (install, then generate a clip) and `make test` (install, then run the tests).
# Each makes its own virtual environment in .venv inside the checkout. The CPU build of torch is
# installed first and pinned, so nothing pulls a multi-GB CUDA build; see docs/install.md for CUDA.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/spacetime generate "a red circle moves to the right on a black background" --preview

bench: $(STAMP)
	$(VENV)/bin/spacetime bench

clean:
	rm -rf $(VENV) build *.egg-info
