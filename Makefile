# Two commands: `make demo` and `make test`. Each installs what is missing first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU build of torch when the machine has one on disk (a plain `torch` from PyPI pulls GBs of CUDA).
TORCH_SPEC ?= $(shell ls /opt/wheels/torch-*+cpu-*.whl >/dev/null 2>&1 && echo "torch==$$(ls /opt/wheels/torch-*+cpu-*.whl | head -1 | sed -E 's/.*torch-([0-9.]+)\+cpu.*/\1/')" || echo torch)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
STAMP := .make/installed

.PHONY: demo test install dataset clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q --no-build-isolation -e ".[test]"
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

dataset:
	@test -f $(FMNIST) || { command -v apt-get >/dev/null && \
	  { [ "$$(id -u)" = 0 ] && SUDO= || SUDO=sudo; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist; }; }
	@test -f $(FMNIST) || { echo "Fashion-MNIST missing: apt-get install dataset-fashion-mnist"; exit 1; }

demo: install dataset
	advmem demo

test: install dataset
	$(PYTHON) -m pytest -q

clean:
	rm -rf .make runs build src/*.egg-info .pytest_cache
