SHELL := /bin/bash
# .venv is made with PYTHON (`make install PYTHON=/path/to/python3.11`), or else with the interpreter
# scripts/venv-python.sh picks: the distribution's optimised build where there is one. An existing .venv is kept:
# remove it to remake it.
VENV := .venv
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/llmops
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
# tests/e2e's topology gets a Redis database of its own: the suite's in-process ledger drainer reads TEST_REDIS_URL's.
TEST_E2E_REDIS_URL ?= redis://127.0.0.1:6379/14
# The suite's tests wait on processes and sockets about half the time: two pytest-xdist workers keep both cores busy.
# Each takes Redis databases and a database name of its own (tests/worker_env.py); a module's tests stay together.
PYTEST_WORKERS ?= 2

# tiktoken's encodings ship beside the checkout, so nothing downloads at run time.
SHARED_TIKTOKEN := $(abspath ../shared/tiktoken)
ifneq ($(wildcard $(SHARED_TIKTOKEN)),)
export TIKTOKEN_CACHE_DIR ?= $(SHARED_TIKTOKEN)
endif

.PHONY: demo serve test lint format bench install services embedder-model crossenc-model

install: $(VENV)/.installed embedder-model crossenc-model

$(VENV)/.installed: requirements.txt
	test -x $(VENV)/bin/python || { python="$(PYTHON)"; python=$${python:-$$(scripts/venv-python.sh)} && \
		"$$python" -m venv $(VENV); }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# The semantic cache's model as ONNX (fp32 and int8) in LLMOPS_CACHE_EMBEDDER_DIR (var/embedder), exported once from
# the installed model package; the command returns at once when the files are there.
embedder-model: $(VENV)/.installed
	$(VENV)/bin/python manage.py embedder_export

# The semantic cache's cross-encoder, fine-tuned from the same model package on the labelled pairs of
# LLMOPS_CACHE_CROSSENC_TRAINING_PAIRS (bench/cache_pairs.jsonl, cache_holdout.jsonl and cache_pairs_2.jsonl),
# checked on them and installed as int8 ONNX in LLMOPS_CACHE_CROSSENC_DIR (var/crossenc). Minutes the first time
# (one thread); then it returns at once, until the pairs or the recipe change.
crossenc-model: embedder-model
	$(VENV)/bin/python manage.py crossenc_train

demo: install
	scripts/demo.sh

# The production topology on one machine (Procfile): `make serve`, or `make serve ARGS=--mock` with the mock upstream
# and the demo tenant. A Redis it has to start persists with AOF (var/redis), as production's must.
serve: install
	scripts/ensure-services.sh --redis-aof
	scripts/serve.sh $(ARGS)

services:
	scripts/ensure-services.sh

# pytest's exit code 5 (no tests collected) fails the run: a suite that runs nothing proves nothing.
test: install services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) E2E_REDIS_URL=$(TEST_E2E_REDIS_URL) \
		$(VENV)/bin/python -m pytest -p tests.worker_env -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS); \
	status=$$?; if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(VENV)/bin/python bench/overhead.py
