# Geode's task runner. `make help` lists the targets.
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
GEODE := $(VENV)/bin/geode
STAMP := $(VENV)/.geode-installed

$(STAMP): pyproject.toml requirements.lock scripts/install.sh
	./scripts/install.sh

.PHONY: install
install: $(STAMP) ## Create .venv and install Geode with every extra (idempotent)

.PHONY: demo
demo: $(STAMP) ## Install, then run the whole learning loop offline (geode demo; ~10 min on 2 cores)
	$(GEODE) demo

# The test targets pick tests by marker with -m, which replaces the default in pyproject's addopts (that
# default, for a bare `pytest`, leaves out slow, reliability, phoenix and browser). GEODE_REQUIRE=<tiers>
# (tests/tiers.py) turns a skip of those tiers into a failure; .ci/run sets it for every tier it installs.
.PHONY: lint
lint: $(STAMP) ## Ruff (lint and format check) and pyright
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m pyright

.PHONY: test
test: lint ## Lint, type-check and run every test but the slow ones: Phoenix, browser, Ray, faults (what CI runs)
	$(PY) -m pytest -m "not slow"

.PHONY: test-slow
test-slow: $(STAMP) ## Only the slow tier: the demo end to end, the local-model agent, GEPA and MIPROv2 compiles
	$(PY) -m pytest -m slow

.PHONY: test-all
test-all: lint ## Every test, the slow tier included (make test + make test-slow in one run)
	$(PY) -m pytest -m ""

.PHONY: test-fast
test-fast: $(STAMP) ## Unit tests only
	$(PY) -m pytest tests/unit -q

.PHONY: reliability
reliability: $(STAMP) ## The fault-injection suite
	$(PY) -m pytest -m reliability tests/reliability

.PHONY: reliability-long
reliability-long: $(STAMP) ## The soak for 15 min (GEODE_SOAK_S=seconds), then the fuzzers with 25x the examples, new inputs
	GEODE_SOAK_S=$${GEODE_SOAK_S:-900} $(PY) -m pytest -m soak tests/reliability -s
	GEODE_FUZZ_EXAMPLES=5000 GEODE_FUZZ_API_EXAMPLES=1000 GEODE_FUZZ_RANDOM=1 $(PY) -m pytest -m fuzz tests/fuzz -s

.PHONY: format
format: $(STAMP) ## Format and auto-fix
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

.PHONY: bench
bench: $(STAMP) ## Run every benchmark and print our figure beside the anchor's
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

.PHONY: docs
docs: $(STAMP) ## Build the docs with strict link checking
	$(PY) -m mkdocs build --strict

.PHONY: doc-images
doc-images: $(STAMP) ## Retake docs/img/phoenix-trace.png (needs Chromium: GEODE_INSTALL_CHROMIUM=1 make install)
	GEODE_REFRESH_DOC_IMAGES=1 GEODE_REQUIRE=browser $(PY) -m pytest -m browser tests/integration/test_phoenix_ui.py

.PHONY: lock
lock: $(STAMP) ## Re-resolve pyproject's dependencies (every extra) into requirements.lock, with pip
	./scripts/lock.sh

.PHONY: reference
reference: $(STAMP) ## Regenerate the CLI and settings reference pages and deploy/env.example
	$(GEODE) cli-reference > docs/reference/cli.md
	$(GEODE) settings --markdown > docs/reference/settings.md
	$(GEODE) settings --env-example > deploy/env.example

.PHONY: phoenix
phoenix: $(STAMP) ## Start a local Phoenix on 127.0.0.1:6006
	$(GEODE) phoenix

.PHONY: clean
clean: ## Remove Geode's local data (.geode/) and caches, keep the venv
	rm -rf .geode .pytest_cache .ruff_cache site

.PHONY: help
help:
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
