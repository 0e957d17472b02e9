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
	@# Exit 1 means some cells failed: the book is still built (failed runs are a chapter), then make fails.
	@# Anything else (a bad grid file: 2, interrupted: 130) stops here.
	@status=0; $(VENV)/bin/studylib grid params/quick.yaml || status=$$?; \
	  if [ $$status -gt 1 ]; then exit $$status; fi; \
	  $(VENV)/bin/jupyter-book build book/ --path-output book || exit $$?; \
	  echo ""; echo "The report: file://$(CURDIR)/book/_build/html/index.html"; \
	  exit $$status

clean-results:
	rm -rf runs results book/_build book/data_prep book/train book/tune book/deploy book/cost
