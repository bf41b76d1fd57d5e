# The two commands a new user needs: `make demo` and `make test`. Both set the environment up first
# (scripts/setup.sh: idempotent, seconds when already done; the first run builds mmcv, ~15 min).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-slow demo bench seg-transfer transfer clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/nepa-eval demo

bench: setup
	$(VENV)/bin/nepa-eval bench backbone

# pretrained vs random-init tiny backbone on the mosaic segmentation set, 3 seeds (~8 min on 2 cores)
seg-transfer: setup
	$(PY) scripts/seg_transfer.py

# fine-tuned top-1 against pretraining length, two label budgets, 3 seeds, depth profile (README: 'Does NEPA
# pretraining pay?'; about an hour on 2 idle cores)
transfer: setup
	$(VENV)/bin/nepa-eval transfer --jobs 2

clean:
	rm -rf work_dirs .pytest_cache
