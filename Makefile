# Two commands: `make demo` and `make test`. Each installs what is missing first.
#
# Python: the first python3 on PATH. Where that interpreter is "externally managed" (Debian's
# system Python, PEP 668), a virtual environment .venv is made with --system-site-packages, so
# packages already on the machine (torch) are reused and only what is missing is installed.
SYS_PYTHON ?= python3
EXTERNAL := $(shell $(SYS_PYTHON) -c 'import sysconfig,os;print(int(os.path.exists(os.path.join(sysconfig.get_path("stdlib"),"EXTERNALLY-MANAGED"))))' 2>/dev/null)
ifeq ($(EXTERNAL),1)
PYTHON := .venv/bin/python
else
PYTHON := $(SYS_PYTHON)
endif
PIP := $(PYTHON) -m pip
# The CPU build of torch where the machine keeps one on disk; a plain `torch` from PyPI pulls GBs of CUDA.
TORCH_SPEC ?= $(shell ls /opt/wheels/torch-*+cpu-*.whl >/dev/null 2>&1 && echo "torch==$$(ls /opt/wheels/torch-*+cpu-*.whl | head -1 | sed -E 's/.*torch-([0-9.]+)\+cpu.*/\1/')" || echo torch)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
STAMP := .make/installed

.PHONY: demo test install dataset clean apt

$(STAMP): pyproject.toml
	@if [ "$(EXTERNAL)" = 1 ] && [ ! -x .venv/bin/python ]; then \
	  $(SYS_PYTHON) -m venv --system-site-packages .venv 2>/dev/null || { $(MAKE) -s apt PKG=python3-venv && $(SYS_PYTHON) -m venv --system-site-packages .venv; }; fi
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	@$(PYTHON) -c "import setuptools" 2>/dev/null || $(PIP) install -q "setuptools>=64"
	$(PIP) install -q --no-build-isolation -e ".[test]"
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

apt:
	@SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(PKG)

dataset:
	@test -f $(FMNIST) || $(MAKE) -s apt PKG=dataset-fashion-mnist
	@test -f $(FMNIST) || { echo "Fashion-MNIST missing: apt-get install dataset-fashion-mnist"; exit 1; }

demo: install dataset
	$(PYTHON) -m advmem demo

test: install dataset
	$(PYTHON) -m pytest -q

clean:
	rm -rf .make runs build src/*.egg-info .pytest_cache
