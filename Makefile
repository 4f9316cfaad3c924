# Two commands on a fresh machine with Python 3.11+:
#   make run    create .venv, install kvstore, start a local 3-node cluster (Ctrl-C stops it)
#   make test   create .venv with test dependencies, lint, check layers and generated code, run tests
#   make docker-up / docker-down   the same cluster in docker (either compose front-end, no
#               registry needed: scripts/docker_cluster.sh); docker-down V=1 deletes the data
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
NODES  ?= 3

.PHONY: run test install install-test proto lint test-slow test-e2e clean docker-up docker-down

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "kvstore needs Python 3.11+, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The editable install runs once per change of pyproject.toml (a stamp file in the venv),
# not on every `make run`; `make install` forces it. PYTHONWARNINGS=ignore silences
# setuptools' editable-install warning (the build backend inherits it).
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e '.[fast]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e '.[fast,test]'
	touch $@ $(VENV)/.installed-run

install:
	rm -f $(VENV)/.installed-run
	$(MAKE) $(VENV)/.installed-run

install-test:
	rm -f $(VENV)/.installed-test
	$(MAKE) $(VENV)/.installed-test

run: $(VENV)/.installed-run
	$(BIN)/kv cluster up --nodes $(NODES)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Two workers: one runs every real-process test in turn (one work unit of the scheduler in
# tests/conftest.py), the other the simulations, unit, property and fuzz tests beside it.
test: lint
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-test
	KV_SLOW=1 $(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-e2e: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m e2e $(PYTEST_ARGS)

proto: $(VENV)/.installed-test
	$(BIN)/python scripts/gen_proto.py

docker-up:
	scripts/docker_cluster.sh up

docker-down:
	scripts/docker_cluster.sh down $(if $(V),-v)

clean:
	rm -rf $(VENV) data build *.egg-info
