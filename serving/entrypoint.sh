#!/bin/sh
# The serving container's entrypoint (the Dockerfile's ENTRYPOINT and its readiness probe's command;
# tests/test_container.py runs this file): TorchServe on the layout in /mnt/models, see serving/container.py.
#   entrypoint.sh [torchserve --start] --model-store=DIR --ts-config=FILE
#   entrypoint.sh ready
exec python -m platepipe.serving.container "$@"
