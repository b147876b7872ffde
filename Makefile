# The README's two commands: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
.PHONY: demo test lint setup

setup:
	@scripts/setup.sh >/dev/null

demo:
	@VENV=$$(scripts/setup.sh) && scripts/demo.sh "$$VENV"

# PYTEST_ARGS narrows the run (.ci/run's AVX2-capped pass); empty: the whole suite.
test:
	@VENV=$$(scripts/setup.sh) && "$$VENV/bin/ruff" check edgekd tests scripts benchmarks && \
	  PATH="$$VENV/bin:$$PATH" "$$VENV/bin/python" -m pytest $(PYTEST_ARGS)

lint:
	@VENV=$$(scripts/setup.sh) && "$$VENV/bin/ruff" check edgekd tests scripts benchmarks
