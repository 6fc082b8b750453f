# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo lint run clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The integration tests run a real redis-server (Debian's package, installed only when missing).
REDIS_SERVER = command -v redis-server >/dev/null \
	|| apt-get install -y redis-server || (apt-get update && apt-get install -y redis-server)
# The egress tests: a real forward proxy (tinyproxy) and a private hosts file (libnss-wrapper), from Debian.
EGRESS_TOOLS = (command -v tinyproxy >/dev/null && dpkg -s libnss-wrapper >/dev/null 2>&1) \
	|| apt-get install -y tinyproxy libnss-wrapper || (apt-get update && apt-get install -y tinyproxy libnss-wrapper)

# The coding-agent tests run Claude Code itself: npm's package, installed once into a cache directory (npm from
# Debian when missing). Without the npm registry they are skipped, saying so.
CLAUDE_CODE_VERSION := 2.1.332
CLAUDE_CODE_DIR ?= $(HOME)/.cache/llm-sidecar/claude-code-$(CLAUDE_CODE_VERSION)
CLAUDE_CODE_BIN = $(CLAUDE_CODE_DIR)/node_modules/.bin/claude
.PHONY: claude-code
claude-code:
	@($(CLAUDE_CODE_BIN) --version 2>/dev/null | grep -q '^$(CLAUDE_CODE_VERSION) ') || { \
	  (command -v npm >/dev/null || apt-get install -y npm || (apt-get update && apt-get install -y npm)) \
	  && npm install --prefix $(CLAUDE_CODE_DIR) --no-audit --no-fund --loglevel=error \
	       @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION) \
	  && (cd $(CLAUDE_CODE_DIR)/node_modules/@anthropic-ai/claude-code && node install.cjs) \
	  && $(CLAUDE_CODE_BIN) --version; }
# The SGLang DNS-discovery tests: a real DNS server on loopback (dnsmasq, from Debian's dnsmasq-base).
DNS_SERVER = command -v dnsmasq >/dev/null || test -x /usr/sbin/dnsmasq \
	|| apt-get install -y dnsmasq-base || (apt-get update && apt-get install -y dnsmasq-base)

# Test files run in parallel workers (each file stays in one worker, so module-scoped sidecars are shared).
PYTEST_WORKERS ?= 4
test: install
	@$(REDIS_SERVER)
	@$(EGRESS_TOOLS)
	@$(MAKE) -s claude-code || echo "Claude Code could not be installed: its tests will say why they are skipped"
	@$(DNS_SERVER)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

demo: install
	$(PY) -m sidecar demo

lint: install
	$(VENV)/bin/ruff check sidecar tests bench

run: install
	$(PY) -m sidecar serve --config config.example.yaml

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# Performance: `make bench` (BENCH_ARGS="--duration 3" for a quick look), `make bench-soak` (1,000,000 requests),
# `make bench-failover` (what a failover costs a request, on the classic exercise), `make bench-instructions`
# (callgrind's instructions per plain and streamed request: compare before and after a change), `make bench-sglang`
# (the shared SGLang pool against SGLang's own router).
# nginx and wrk come from Debian's packages, installed only when missing.
BENCH_TOOLS = command -v nginx >/dev/null && command -v wrk >/dev/null \
	|| apt-get install -y nginx wrk || (apt-get update && apt-get install -y nginx wrk)
.PHONY: bench bench-soak bench-failover bench-instructions bench-sglang

bench: install
	@$(BENCH_TOOLS)
	$(PY) bench/run.py $(BENCH_ARGS)

bench-soak: install
	@$(BENCH_TOOLS)
	$(PY) bench/run.py --soak $(BENCH_ARGS)

bench-failover: install
	$(PY) bench/failover.py $(BENCH_ARGS)

# Instructions per plain and streamed request under callgrind: repeatable where seconds are not.
bench-instructions: install
	@$(BENCH_TOOLS)
	@command -v valgrind >/dev/null || apt-get install -y valgrind || (apt-get update && apt-get install -y valgrind)
	$(PY) bench/instructions.py $(BENCH_ARGS)

# The shared SGLang pool: prefix-cache hit ratio, balance and TTFT per policy, against SGLang's own router (smg,
# installed from PyPI into .bench-cache/smg by the script, not a project dependency), and the spill-over cost.
bench-sglang: install
	@$(REDIS_SERVER)
	$(PY) bench/sglang.py $(BENCH_ARGS)
