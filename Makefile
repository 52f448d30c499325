# The two commands of the README: `make demo` and `make test`. Both create .venv and install when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

FMNIST_FILE := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data test demo bench fashion-mnist

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist. As root it is installed here; otherwise the
# tests that need it skip, and `make test` ends with a note naming the package.
data:
	@if [ ! -e $(FMNIST_FILE) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist \
	    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; } \
	    || echo "make: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"; \
	  else echo "make: not root: install Debian's dataset-fashion-mnist for the Fashion-MNIST runs and tests"; fi; \
	fi

install: $(STAMP) data

test: install
	$(PY) -m pytest

demo: install
	$(VENV)/bin/heist run sweeps/quickstart.yaml

bench: install
	$(VENV)/bin/heist bench

FMNIST := $(VENV)/bin/heist trial sweeps/trials/fashion_mnist_knockoff.yaml
fashion-mnist: install
	mkdir -p heist_runs
	$(FMNIST) --set defense.name=none --json heist_runs/fashion_mnist_none.json
	$(FMNIST) --set defense.name=reverse_sigmoid --set defense.params.beta=1.0 --set defense.params.gamma=0.2 \
		--json heist_runs/fashion_mnist_reverse_sigmoid.json
	$(FMNIST) --set defense.name=dcp --set defense.params.beta=0.5 --json heist_runs/fashion_mnist_dcp.json
