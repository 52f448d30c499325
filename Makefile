# The two commands of the README: `make demo` and `make test`. Both create .venv and install when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench fashion-mnist

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/heist run sweeps/quickstart.yaml

bench: $(STAMP)
	$(VENV)/bin/heist bench

fashion-mnist: $(STAMP)
	$(VENV)/bin/heist experiment fashion_mnist
