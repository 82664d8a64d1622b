# platepipe's two images, from the repository root (`make images REGISTRY=...` builds and pushes both):
#   --target steps   REGISTRY/platepipe:VERSION          the pipeline's steps (kfp.image)
#   (last stage)     REGISTRY/platepipe-serving:VERSION  the KServe serving container (deploy.image)
# Both: torch 2.13 (CUDA) + mmcv 2.1 with CUDA ops + mmdet 3.3 + platepipe in /opt/platepipe, as uid 1000.
#
# The serving container is TorchServe itself, no KServe wrapper: serving/entrypoint.sh (serving/container.py)
# runs it on the layout KServe's storage initializer puts in /mnt/models, answering v1, v2 and /predictions on
# 8080 with the handler's batch-safe envelopes; its `ready` is the runtime's readiness probe. The ServingRuntime
# that runs it is components/runtime.py's (`platepipe deploy --dry-run` prints it); tests/test_container.py runs
# this entrypoint with that runtime's args and env.
#
# CUDA_VERSION must match the CUDA build of torch 2.13 on PyPI (`python -c "import torch; print(torch.version.cuda)"`),
# since mmcv's CUDA ops are compiled against it here.
ARG CUDA_VERSION=12.8.1
ARG UBUNTU=24.04

# ---- build: a venv with everything, mmcv compiled with its CUDA ops ------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY scripts scripts
COPY pipeline pipeline
COPY components components
COPY serving serving
COPY configs configs
# GPU architectures to compile mmcv's ops for (T4, A100, A10/L4, L40S, H100)
ENV TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0" MAX_JOBS=8
# the same set-up script as `make setup`; then every module the entrypoint and the handler load
RUN VENV=/opt/platepipe PLATEPIPE_EDITABLE=0 PLATEPIPE_CACHE=/tmp/platepipe-cache bash scripts/setup.sh \
    && /opt/platepipe/bin/python -c "import platepipe.serving.container, platepipe.serving.handler, platepipe.serving.reader, platepipe.components.local_server, ts.model_server, ts.model_service_worker, mmcv.ops, mmdet, kfp" \
    && rm -rf /tmp/platepipe-cache

# ---- steps: the pipeline's components (kfp.image); CUDA runtime, Python, the venv -------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU} AS steps
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && (userdel -r ubuntu 2>/dev/null || true) \
    && useradd --uid 1000 --create-home --home-dir /home/platepipe --shell /bin/bash platepipe
COPY --from=build /opt/platepipe /opt/platepipe
# the commit of the code (make images passes it): exported models carry it (components/export.py)
ARG SOURCE_COMMIT=unknown
ENV PATH=/opt/platepipe/bin:$PATH PYTHONUNBUFFERED=1 PLATEPIPE_SOURCE_COMMIT=$SOURCE_COMMIT
WORKDIR /home/platepipe
USER 1000

# ---- serving: TorchServe (Java) on /mnt/models, the entrypoint; no compilers ------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU} AS serving
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 openjdk-17-jre-headless ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && (userdel -r ubuntu 2>/dev/null || true) \
    && useradd --uid 1000 --create-home --home-dir /home/model-server --shell /bin/bash model-server
COPY --from=build /opt/platepipe /opt/platepipe
COPY serving/entrypoint.sh /usr/local/bin/platepipe-entrypoint
ENV PATH=/opt/platepipe/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /home/model-server
USER 1000
EXPOSE 8080 8082
ENTRYPOINT ["/usr/local/bin/platepipe-entrypoint"]
CMD ["--model-store=/mnt/models/model-store", "--ts-config=/mnt/models/config/config.properties"]
