# make setup  - create .venv (if missing) and install studylib with its dependencies; idempotent
# make test   - setup, then the test suite
# make study  - setup, then the default study (params/quick.yaml), then the book
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test study book clean-results

setup: $(STAMP)

# Reinstall only when the dependency list changes: a second `make setup` takes seconds.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q

study: setup
	@set -e; for m in mnasnet0_5 mobilenet_v3_small mobilenet_v3_large shufflenet_v2_x0_5 shufflenet_v2_x1_0 tiny_vit_5m_224 smallvgg3_bn; do \
	  mkdir -p book/train; \
	  $(VENV)/bin/papermill --cwd book notebooks/train.ipynb book/train/$$m.ipynb -p model $$m; \
	done
	@echo "executed notebooks are in book/train/"

clean-results:
	rm -rf runs results book/_build book/data_prep book/train book/tune book/deploy book/cost
