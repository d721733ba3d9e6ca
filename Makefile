# The README's verbs. Each one creates .venv on first use (scripts/setup_env.sh) and reuses it.
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export LANCEDB_LOG := error
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-fast lint bench bundle clean-venv

venv:
	@bash scripts/setup_env.sh $(VENV)

demo: venv
	$(BIN)/appliance demo

# The full suite, what CI runs: the lint contracts, then every test (about 30 minutes on 2 cores),
# printing the 25 slowest.
test: venv lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 tests

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

# The field-install bundle (README: Field install): BUNDLE_KEY is made on first use (keep it safe),
# MODELS / ARTEFACTS are space-separated paths; e.g. make bundle ARTEFACTS=workspace/models/mv-...
BUNDLE_OUT ?= dist/bundle
BUNDLE_KEY ?= $(HOME)/.config/slm-appliance/bundle-signing
MODELS ?=
ARTEFACTS ?=
bundle: venv
	@[ -f "$(BUNDLE_KEY)" ] || $(BIN)/appliance bundle keygen --out "$(BUNDLE_KEY)"
	$(BIN)/appliance bundle build --target cpu --out "$(BUNDLE_OUT)" --key "$(BUNDLE_KEY)" \
	  $(foreach m,$(MODELS),--models "$(m)") $(foreach a,$(ARTEFACTS),--workspace-artefacts "$(a)") $(BUNDLE_ARGS)

clean-venv:
	rm -rf $(VENV)
