# make setup  - create .venv (if missing) and install studylib with its dependencies; idempotent
# make test   - setup, then the test suite (all of it, on two pytest-xdist workers, one test file per worker at a time: about 8 minutes on 2 cores; the slowest 15 listed at the end)
# make test-fast - setup, then the tests not marked slow (no notebook, grid, server or book build): the edit-test loop
# make study  - setup, a short benchmark of the quick study's models, the default study (params/quick.yaml), then the book
#              DATA=/path/to/photos: the same on your own images (<class>/* or <split>/<class>/*), as study quick-<folder name>
# make bench   - setup, then the full benchmark of the quick study's models (whole training split, 3 rounds)
# make cifar10 - setup, study 003's arms and the 90% headline on CIFAR-10 (params/cifar10.yaml), then the book;
#              CIFAR-10 from data/cifar10, linked from $(SHARED)/data/cifar10-jpg when that exists (see the README)
# make transfer - setup, pretraining on CIFAR-10 then scratch / head-only / all-layers fine-tuning on clothing10
#              (params/transfer.yaml), then the book with the chapter "Does pretraining help?"
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test test-fast study bench cifar10 cifar10-data transfer book clean-results

# The methods chapter's table, and what amp/channels_last "auto" choose: every quick-study model's bare step
# in four settings (fp32/bf16 x NCHW/channels_last) vs the study's loop. `make study` runs a short version
# (2 batches of 64 per pass, 2 rounds, 1 warm-up step per setting: tiny_vit_5m_224 alone trains at ~33 images/s).
STUDY_BENCH := --grid params/quick.yaml --train-limit 128 --rounds 2 --warmup 1 --latency-calls 10 --throughput-calls 2

setup: $(STAMP)

# Reinstall only when the dependency list changes: a second `make setup` takes seconds.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

study: setup
	@# DATA (from make's command line or the environment) reaches the commands as $$DATA: any path, spaces included.
	@# A bad one stops here, with its one sentence, before the bench.
	@if [ -n "$$DATA" ]; then $(VENV)/bin/studylib grid params/quick.yaml --check --data "$$DATA" > /dev/null || exit $$?; fi
	@# A benchmark that fails (data missing, say) does not stop the study: the methods chapter says so.
	$(VENV)/bin/studylib bench $(STUDY_BENCH) $${DATA:+--data "$$DATA"} || echo "studylib bench failed: the book is built without its table"
	@# Exit 1 means some cells failed: the book is still built (failed runs are a chapter), then make fails.
	@# Anything else (a bad grid file or --data: 2, interrupted: 130) stops here.
	@status=0; $(VENV)/bin/studylib grid params/quick.yaml $${DATA:+--data "$$DATA"} || status=$$?; \
	  if [ $$status -gt 1 ]; then exit $$status; fi; \
	  $(VENV)/bin/jupyter-book build book/ --path-output book || exit $$?; \
	  echo ""; echo "The report: file://$(CURDIR)/book/_build/html/index.html"; \
	  exit $$status

# cifar10's bench: 1024 training images per pass (8 batches of the arms' 128, 2 of the headline's 500), 2 rounds.
CIFAR10_BENCH := --grid params/cifar10.yaml --train-limit 1024 --rounds 2 --warmup 1 --latency-calls 10 --throughput-calls 2
SHARED ?= ../shared

# data/cifar10: the JPEG export's archive and its SHA256SUMS, linked from $(SHARED) when that has them;
# a data/cifar10 that already holds a copy (any of the formats the README lists) is left as it is.
cifar10-data:
	@if [ ! -e data/cifar10 ] && [ -f $(SHARED)/data/cifar10-jpg/cifar10-jpg.tar.gz ]; then \
	  mkdir -p data/cifar10 && \
	  ln -s "$$(realpath $(SHARED)/data/cifar10-jpg/cifar10-jpg.tar.gz)" data/cifar10/cifar10-jpg.tar.gz && \
	  ln -s "$$(realpath $(SHARED)/data/cifar10-jpg/SHA256SUMS)" data/cifar10/SHA256SUMS && \
	  echo "data/cifar10: linked the JPEG export from $(SHARED)/data/cifar10-jpg"; fi

cifar10: setup cifar10-data
	$(VENV)/bin/studylib bench $(CIFAR10_BENCH) || echo "studylib bench failed: the book is built without its table"
	@status=0; $(VENV)/bin/studylib grid params/cifar10.yaml || status=$$?; \
	  if [ $$status -gt 1 ]; then exit $$status; fi; \
	  $(VENV)/bin/jupyter-book build book/ --path-output book || exit $$?; \
	  echo ""; echo "The report: file://$(CURDIR)/book/_build/html/index.html"; \
	  exit $$status

# No bench of its own: amp and channels_last "auto" take the newest bench rows `make study` or `make cifar10`
# measured (else the device's default).
transfer: setup cifar10-data
	@status=0; $(VENV)/bin/studylib grid params/transfer.yaml || status=$$?; \
	  if [ $$status -gt 1 ]; then exit $$status; fi; \
	  $(VENV)/bin/jupyter-book build book/ --path-output book || exit $$?; \
	  echo ""; echo "The report: file://$(CURDIR)/book/_build/html/index.html"; \
	  exit $$status

bench: setup
	$(VENV)/bin/studylib bench --grid params/quick.yaml

clean-results:
	rm -rf runs results book/_build book/data_prep book/train book/tune book/deploy book/cost
