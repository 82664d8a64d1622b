#!/usr/bin/env bash
# Build and push platepipe's two images (the Dockerfile) with docker or podman:
#   REGISTRY/platepipe:VERSION           the pipeline's steps      (kfp.image)
#   REGISTRY/platepipe-serving:VERSION   the serving container     (deploy.image)
# VERSION is the package's (setup.cfg). Usage: scripts/images.sh [--no-push] REGISTRY   (make images REGISTRY=...)
# ENGINE=docker|podman picks the engine (default: docker if present, else podman).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
die() { printf '[images] error: %s\n' "$*" >&2; exit 2; }

PUSH=1
if [ "${1:-}" = "--no-push" ]; then PUSH=0; shift; fi
REGISTRY=${1:-}
[ -n "$REGISTRY" ] || die "no registry: make images REGISTRY=europe-docker.pkg.dev/PROJECT/REPO (or docker.io/USER)"
REGISTRY=${REGISTRY%/}
case "${REGISTRY#*/}" in */*:*|*/*@*) die "REGISTRY $REGISTRY: give the registry and path only, no tag (the tag is the version)";; esac

ENGINE=${ENGINE:-}
if [ -z "$ENGINE" ]; then
  if command -v docker >/dev/null; then ENGINE=docker
  elif command -v podman >/dev/null; then ENGINE=podman
  else die "neither docker nor podman is installed: install one (https://docs.docker.com/engine/install/, https://podman.io/docs/installation), or build the Dockerfile on a machine that has one"
  fi
fi
command -v "$ENGINE" >/dev/null || die "ENGINE=$ENGINE is not installed"

VERSION=$(sed -n 's/^version *= *//p' "$ROOT/setup.cfg" | head -1)
[ -n "$VERSION" ] || die "no version in setup.cfg"
STEPS=$REGISTRY/platepipe:$VERSION
SERVING=$REGISTRY/platepipe-serving:$VERSION

cd "$ROOT"
# the commit the images are built from: written into every model the steps export (its manifest, platepipe models)
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
echo "[images] $ENGINE build $STEPS (the Dockerfile --target steps, commit $COMMIT)"
"$ENGINE" build -f Dockerfile --target steps --build-arg "SOURCE_COMMIT=$COMMIT" -t "$STEPS" .
echo "[images] $ENGINE build $SERVING (the Dockerfile --target serving)"
"$ENGINE" build -f Dockerfile --target serving -t "$SERVING" .
if [ "$PUSH" = 1 ]; then
  for image in "$STEPS" "$SERVING"; do
    echo "[images] $ENGINE push $image"
    "$ENGINE" push "$image" || die "pushing $image failed: log in first ($ENGINE login ${REGISTRY%%/*}) and check that the repository exists"
  done
fi
echo "[images] done; use them with:"
echo "  --set kfp.image=$STEPS --set deploy.image=$SERVING"
