# Two commands on a fresh machine with Python 3.11+:
#   make run    create .venv, install kvstore, start a local 3-node cluster (Ctrl-C stops it)
#   make test   create .venv with test dependencies, lint, check layers and generated code, run tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
NODES  ?= 3

.PHONY: run test install install-test proto lint test-slow test-e2e clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "kvstore needs Python 3.11+, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[fast]'

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[fast,test]'

run: install
	$(BIN)/kv cluster up --nodes $(NODES)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: install-test
	KV_SLOW=1 $(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-e2e: install-test
	$(BIN)/python -m pytest -q -m e2e $(PYTEST_ARGS)

proto: install-test
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) data build *.egg-info
