# Two commands for a fresh machine: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=
# Where the pinned torch comes from, e.g. https://download.pytorch.org/whl/cpu on machines whose default
# index serves CUDA wheels; unset, pip's default index is used.
TORCH_INDEX_URL ?=

.PHONY: demo test setup clean lint docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull several GB of CUDA wheels.
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/rayrec run --config configs/demo.yaml $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The import contracts in .importlinter: the layers of ../shared/DESIGN.md, and serve loading no training code.
lint: $(STAMP)
	$(BIN)/lint-imports

# The configuration reference, rendered from the schema; tests/unit/test_config_docs.py fails when it is stale.
docs: $(STAMP)
	$(BIN)/python -m rayrec.config_docs docs/configuration.md

clean:
	rm -rf data runs .pytest_cache
