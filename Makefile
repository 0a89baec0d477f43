# The two commands: `make run` (set up, then start a relay on 127.0.0.1:8080)
# and `make test` (set up, then run every check and test). Python and npm
# packages live in .venv and the node_modules folders; the Debian packages the
# tests start are installed by .ci/system-packages (as root) or named by it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JS := clients/js
JS_STAMP := $(JS)/node_modules/.installed
BENCH_JS := tests/bench
BENCH_STAMP := $(BENCH_JS)/node_modules/.installed
ARGS ?=

.PHONY: run test system install lint typecheck pytest js-test js-browser-test bench soak clean

# `make run` listens on RELAY_PORT (make run RELAY_PORT=9000, or from the
# environment); ARGS holds any other `relay serve` flags. It says where the demo
# is and what to try before the relay starts.
RELAY_PORT ?= 8080
TRY_URL := $(if $(filter-out 8080,$(RELAY_PORT)), --url ws://127.0.0.1:$(RELAY_PORT)/v1/ws)

run: $(STAMP)
	$(if $(filter --port --port=%,$(ARGS)),$(error give the port as RELAY_PORT=N, not in ARGS))
	@echo "relay: starting on port $(RELAY_PORT) (Ctrl-C stops it). The demo: http://127.0.0.1:$(RELAY_PORT)/"
	@echo "Then try, in a new terminal in $(CURDIR):"
	@echo "  .venv/bin/relay-peer listen --id bob$(TRY_URL)"
	@echo "and in another:"
	@echo "  .venv/bin/relay-peer send --id alice$(TRY_URL) bob 'hello bob'"
	$(BIN)/relay serve --port $(RELAY_PORT) $(ARGS)

test: system lint typecheck pytest js-test js-browser-test

# The Debian packages the tests start; installed when missing (as root),
# otherwise named with the command that installs them.
system:
	@.ci/system-packages test

install: $(STAMP) $(JS_STAMP) $(BENCH_STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "relay needs Python 3.11 or newer")'
	@.ci/system-packages run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./clients/python
	@touch $@

$(JS_STAMP): $(JS)/package.json $(JS)/package-lock.json
	npm ci --prefix $(JS) --no-audit --no-fund
	@touch $@

# The benchmark's own ws (with bufferutil) and msgpack: the generator and the node reference.
$(BENCH_STAMP): $(BENCH_JS)/package.json $(BENCH_JS)/package-lock.json
	npm ci --prefix $(BENCH_JS) --no-audit --no-fund
	@touch $@

lint: $(STAMP)
	$(BIN)/ruff check relay clients/python tests
	$(BIN)/ruff format --check relay clients/python tests

typecheck: $(STAMP)
	$(BIN)/mypy relay clients/python/relay_client

pytest: $(STAMP) $(JS_STAMP) $(BENCH_STAMP)  # deploy, interop and bench smoke tests run node too
	$(BIN)/pytest

js-test: $(STAMP) $(JS_STAMP)
	npm test --prefix $(JS)

js-browser-test: $(STAMP) $(JS_STAMP)
	npm run test:browser --prefix $(JS)

# Every scenario, one round: the relay beside node ws and the bare forwarder, as ratios.
bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python tests/bench/bench.py $(ARGS)

# Five minutes of churn (not part of `make test`): 40 clients connect, send
# requests to each other, drop and resume or leave and come back, while the
# relay's RSS is printed every 5 s; fails if a request went unanswered or a
# message acknowledged ok never arrived. ARGS="--seconds 60" for a shorter one.
soak: $(STAMP)
	$(BIN)/python tests/bench/soak.py $(ARGS)

clean:
	rm -rf $(VENV) $(JS)/node_modules $(BENCH_JS)/node_modules .pytest_cache .mypy_cache .ruff_cache
