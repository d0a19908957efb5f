# The README's two commands: `make demo` (main job) and `make test` (test suite). Both set up .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo ready-models test lint format install install-dev clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "pneumo needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)

# measured: a .venv with PyTorch's default (CUDA) build takes 6.3 GB, 3.2 GB of it NVIDIA libraries
INSTALL_SIZE_NOTE := @echo "installing pneumo and PyTorch into $(VENV): about 6.3 GB (3.2 GB of it CUDA libraries; without a GPU, see README: CPU-only PyTorch)"

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(INSTALL_SIZE_NOTE)
	$(PIP_INSTALL) -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(INSTALL_SIZE_NOTE)
	$(PIP_INSTALL) -e '.[dev]'
	@touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The synthetic walk, then the default shipped model on examples/ (labels, probabilities, in_distribution,
# Grad-CAM overlays into DEMO_CAM).
DEMO_CAM ?= demo-output/grad-cam
demo: install
	$(BIN)/pneumo demo
	$(BIN)/pneumo predict examples/*.jpeg --cam $(DEMO_CAM)
	@echo "Grad-CAM overlays of the example images: $(DEMO_CAM)/"

# Retrain, evaluate and reinstall the shipped models (src/pneumo/zoo/) from the dataset: make ready-models DATA=...
ready-models: install
	$(BIN)/python experiments/ready_models/build.py --data $(DATA)

test: install-dev lint
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
