# The README's verbs. Each one creates .venv on first use (scripts/setup_env.sh) and reuses it.
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export LANCEDB_LOG := error
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-fast lint bench clean-venv

venv:
	@bash scripts/setup_env.sh $(VENV)

demo: venv
	$(BIN)/appliance demo

# The full suite, what CI runs: the lint contracts, then every test (about 15 minutes on 2 cores).
test: venv lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# The edit loop: unit tests only (tests/unit, well under a minute; no model is trained or served).
test-fast: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

# ruff's small bug-finding rule set and the import-linter layer contracts (both in pyproject.toml).
lint: venv
	$(BIN)/ruff check --no-cache .
	$(BIN)/lint-imports --no-cache

bench: venv
	@set -e; found=0; for b in bench/*.py; do [ -f "$$b" ] || continue; found=1; echo "== $$b"; $(BIN)/python $$b; done; \
	  [ $$found = 1 ] || echo "no benchmarks yet (see README: Not done yet)"

clean-venv:
	rm -rf $(VENV)
