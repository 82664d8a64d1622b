# The two commands of the README:
#   make run    set up .venv (first time: builds mmcv, ~14 min) and run the whole pipeline locally
#   make test   set up .venv and run the test suite
# and for a cluster:
#   make images REGISTRY=europe-docker.pkg.dev/PROJECT/REPO   build and push the step and serving images
VENV ?= .venv
ARGS ?=
PYTEST_ARGS ?=

REGISTRY ?=

.PHONY: setup run test images clean

setup:
	VENV=$(abspath $(VENV)) bash scripts/setup.sh

run: setup
	$(VENV)/bin/platepipe run --local $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

images:
	bash scripts/images.sh $(if $(NO_PUSH),--no-push) $(REGISTRY)

clean:
	rm -rf $(VENV) build *.egg-info
