# The README's verbs. Each one creates .venv on first use (scripts/setup_env.sh) and reuses it.
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export LANCEDB_LOG := error
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test bench clean-venv

venv:
	@bash scripts/setup_env.sh $(VENV)

demo: venv
	$(BIN)/appliance demo

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: venv
	@set -e; found=0; for b in bench/*.py; do [ -f "$$b" ] || continue; found=1; echo "== $$b"; $(BIN)/python $$b; done; \
	  [ $$found = 1 ] || echo "no benchmarks yet (see README: Not done yet)"

clean-venv:
	rm -rf $(VENV)
