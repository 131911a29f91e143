# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv (venv + pip)
# when missing and installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-daemon ui lint bench clean-demo

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU wheel on disk; a wider range would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lora-pipeline demo

test: $(STAMP)
	$(PY) -m pytest

# The daemon tests that run a real `dagster-daemon` for minutes: end to end (`dagster dev`, sensor and
# schedule ticks: 8-9 min, mostly waiting) and the sensor at scale (50 runs x 10 checkpoints: ~4 min,
# mostly the daemon creating 550 queued runs). `make test` skips them; `.ci/run` runs them beside it.
test-daemon: $(STAMP)
	LORA_PIPELINE_DAEMON_E2E=1 $(PY) -m pytest tests/daemon/test_daemon_end_to_end.py tests/daemon/test_scale.py --basetemp=$${TMPDIR:-/tmp}/lora-pipeline-daemon-e2e

ui: $(STAMP)
	$(VENV)/bin/lora-pipeline ui

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	@for b in bench/*_bench.py; do echo "== $$b"; $(PY) $$b || exit 1; done
