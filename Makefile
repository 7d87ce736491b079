# patchaudit: `make run` serves the dashboard, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
export PYTHONUNBUFFERED := 1

.PHONY: install system-deps run test test-fast lint unit integration e2e bench bench-quick docs screenshots clean fuzz load

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first (here it comes from local disk; elsewhere pip fetches it)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Chromium for the browser tests (Debian's package; browser downloads do not work here).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)); \
	  else echo "WARNING: no chromium found; install Debian's chromium package for the browser tests"; fi; \
	fi

run: install
	$(VENV)/bin/patchaudit serve --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check backend tests bench
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -q tests/unit

# the quick tier: unit tests that need neither the bundled trained model nor a browser
test-fast: install
	PATCHAUDIT_TEST_FAST=1 $(VENV)/bin/pytest -q -p no:cacheprovider -m "not bundled and not slow" tests/unit

integration: install
	$(VENV)/bin/pytest -q tests/integration

e2e: install system-deps
	$(VENV)/bin/pytest -q tests/e2e

test: install system-deps lint
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

bench: install
	$(VENV)/bin/patchaudit bench accuracy --out bench/results/accuracy.json --write-defaults
	$(VENV)/bin/patchaudit bench trust --out bench/results/trust.json
	$(VENV)/bin/patchaudit bench cost --out bench/results/cost_cpu.json
	$(PY) bench/bench_verify_latency.py
	$(PY) bench/bench_inspect_latency.py
	$(PY) bench/bench_lane.py
	$(VENV)/bin/patchaudit bench circuits --out bench/results/circuits.json
	$(VENV)/bin/patchaudit bench edges --out bench/results/edges.json
	$(VENV)/bin/patchaudit bench atpstar --out bench/results/atpstar.json
	$(VENV)/bin/patchaudit bench scale --out bench/results/scale.json
	$(VENV)/bin/patchaudit bench diagnose --out bench/results/diagnose.json
	$(PY) bench/bench_load_bundled.py
	$(PY) bench/make_report.py
	$(MAKE) docs

# the audit example of docs/USAGE.md (head map PNG + error table) and the bundled model's accuracy (docs/BUNDLED_MODEL.md)
docs: install system-deps
	$(VENV)/bin/patchaudit audit --model bundled --task ioi --n 16 --methods atp,hvp,sat,ap \
	  --out docs/audit/report.json --html docs/audit/report.html --png docs/audit/heads.png > docs/audit/table.txt
	$(PY) bench/make_docs.py

# schemathesis against a real `patchaudit serve` (200 examples per operation; 0 server errors)
fuzz: install
	PATCHAUDIT_FUZZ_EXAMPLES=200 PATCHAUDIT_FUZZ_OUT=bench/results/fuzz.json $(VENV)/bin/pytest -q -p no:cacheprovider tests/integration/test_fuzz.py

# 50 loopback clients for 60 s; writes bench/results/load.json and the table in docs/SECURITY.md
load: install
	$(PY) bench/load_test.py --clients 50 --seconds 60

bench-quick: install
	$(VENV)/bin/patchaudit bench accuracy --quick --out /tmp/patchaudit-accuracy-quick.json
	$(VENV)/bin/patchaudit bench trust --quick --out /tmp/patchaudit-trust-quick.json
	$(VENV)/bin/patchaudit bench cost --quick --out /tmp/patchaudit-cost-quick.json

screenshots: install system-deps
	$(VENV)/bin/python tests/e2e/make_screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
