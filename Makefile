# The two commands of the README: `make demo` and `make test`. Both install first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
export ROUTENLP_VENV := $(VENV)

.PHONY: install demo lint test test-unit test-slow doctor lock clean

install:
	bash scripts/install.sh

demo: install
	$(VENV)/bin/routenlp demo

# The linter (ruff) and the layer contracts (import-linter), both configured in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check
	$(VENV)/bin/lint-imports

# Lint, then unit + integration (real tritonserver, perf_analyzer, vLLM). pytest exits 5 when it
# collects nothing, and make treats any non-zero exit as failure.
test: install lint
	$(PY) -m pytest -m "not slow" --durations=15

test-unit: install
	$(PY) -m pytest tests/unit

# Long suites: slow-marked tests (the vLLM decoder at full length, coopt with its random ablation),
# then the reliability module at full size (5,000 fuzz cases per protocol = 10,000, a 10-minute
# soak, a swap that reloads every model including the vLLM tiers).
test-slow: install
	$(PY) -m pytest -m slow --durations=15
	ROUTENLP_FUZZ_EXAMPLES=5000 ROUTENLP_SOAK_SECONDS=600 ROUTENLP_SWAP_EVERY_MODEL=1 $(PY) -m pytest -s tests/integration/test_reliability.py

doctor: install
	$(VENV)/bin/routenlp doctor

lock:
	bash scripts/lock.sh

clean:
	rm -rf $(VENV) artifacts
