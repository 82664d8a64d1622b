# The two commands of the README:
#   make run    set up .venv (first time: builds mmcv, ~14 min) and run the whole pipeline locally
#   make test   set up .venv and run the test suite
VENV ?= .venv
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test clean

setup:
	VENV=$(abspath $(VENV)) bash scripts/setup.sh

run: setup
	$(VENV)/bin/platepipe run --local $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
