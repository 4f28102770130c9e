# Everything goes through .venv, which is (re)built whenever pyproject.toml or constraints.txt
# is newer than it. buf comes from the npm registry into .tools/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
PROTO := proto/discovery/v1/discovery.proto

.PHONY: run test lint proto proto-check bench bench-smoke freeze clean chromium prometheus etcd

# The dashboard test drives Debian's chromium through Playwright; Playwright's own browser
# downloads are never used.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

run: $(STAMP)
	$(BIN)/service-discovery

# Two workers, each taking whole test files (module fixtures such as an etcd cluster stay on one
# worker): most tests wait on processes, timers and sockets, so the suite takes about half as long.
test: $(STAMP) etcd lint proto-check chromium prometheus
	$(BIN)/python -m pytest -n 2 --dist loadfile

chromium:
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

# The tests run a real Prometheus (Debian's package). Installing it may enable its system service
# where systemd runs; the tests never use that one: they start their own on a free port.
prometheus:
	@command -v prometheus >/dev/null || (apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)

lint: $(STAMP) $(BUF)
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

proto: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTO)

# Regenerates into a scratch folder and fails when the committed code differs.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && \
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto \
		--python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTO) && \
	for f in $$(cd $$tmp && find . -type f); do \
		cmp -s $$tmp/$$f $$f || { echo "stale generated code: $$f (run 'make proto')"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated code is fresh"

bench: $(STAMP) etcd
	$(BIN)/python -m bench.run

bench-smoke: $(STAMP) etcd
	$(BIN)/python -m bench.run --smoke

# The etcd the replica tests start on free ports (Debian's package; the tests never use a system
# etcd, and the package's own service is stopped so it holds no well-known port), and openssl
# for the certificates of the TLS test.
etcd:
	@command -v etcd >/dev/null || (apt-get update && apt-get install -y etcd-server && \
		(systemctl disable --now etcd 2>/dev/null || service etcd stop 2>/dev/null || true))
	@command -v openssl >/dev/null || (apt-get update && apt-get install -y openssl)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(BUF):
	npm install --silent --no-save --no-package-lock --prefix .tools @bufbuild/buf@$(BUF_VERSION)

# Rewrites constraints.txt from what the venv holds (after changing a pin in pyproject.toml).
freeze: $(STAMP)
	(echo "# Every package the venv holds, pinned; 'make freeze' rewrites it."; \
	 $(BIN)/pip freeze --exclude-editable | grep -v '^-e') > constraints.txt

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
