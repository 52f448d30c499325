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

FMNIST := $(VENV)/bin/heist trial sweeps/trials/fashion_mnist_knockoff.yaml
fashion-mnist: $(STAMP)
	mkdir -p heist_runs
	$(FMNIST) --set defense.name=none --json heist_runs/fashion_mnist_none.json
	$(FMNIST) --set defense.name=reverse_sigmoid --set defense.params.beta=1.0 --set defense.params.gamma=0.2 \
		--json heist_runs/fashion_mnist_reverse_sigmoid.json
	$(FMNIST) --set defense.name=dcp --set defense.params.beta=0.5 --json heist_runs/fashion_mnist_dcp.json
