#!/usr/bin/env bash
# Create or update .venv with everything platepipe needs, on a fresh machine.
#
# mmcv 2.1.x has no wheel for current torch, so it is built from source once (with its compiled ops,
# CUDA ones where torch has CUDA) and the wheel is cached under $PLATEPIPE_CACHE/wheels/<torch-build>/.
# A second run reuses that wheel and, when nothing changed, installs nothing at all.
# PLATEPIPE_EDITABLE=0 installs platepipe as a plain package without the test tools (the serving image).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
CACHE=${PLATEPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/platepipe}
TORCH_VERSION=2.13.0
MMCV_VERSION=2.1.0
KSERVE_STORAGE_VERSION=0.21.0
STAMP=$VENV/.platepipe-setup
INPUTS_HASH=$(cat "$ROOT/setup.cfg" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

# everything runs from main(), so bash has read the whole file before it starts
main() {
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$INPUTS_HASH" ]; then
    say "environment $VENV is up to date"
    exit 0
  fi

  command -v "$PY" >/dev/null || die "$PY not found: install Python 3.10-3.12 (python3 -m venv must work)"
  "$PY" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)' \
    || die "Python 3.10-3.12 is needed (torch/mmcv wheels): set PYTHON=/path/to/python3.11"

  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PY" -m venv "$VENV" || die "python3 -m venv failed: install the venv module (Debian: apt-get install python3-venv)"
  fi
  VPY=$VENV/bin/python
  # pip, minus the warnings some machines' pip configuration prints for every package
  pip_quiet() { "$VPY" -m pip "$@" -q 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
  # mmengine asks for opencv-python, platepipe for the headless build: both share the cv2 folder, so both
  # are held to OpenCV 4 everywhere (5.x changed drawing and dtype rules) and the headless one installed last.
  CONSTRAINTS=$VENV/platepipe-constraints.txt
  printf '%s\n' "opencv-python>=4.8,<5" "opencv-python-headless>=4.8,<5" > "$CONSTRAINTS"
  export PIP_CONSTRAINT=$CONSTRAINTS
  PIP=(pip_quiet install)

  say "installing build tools and torch $TORCH_VERSION"
  "${PIP[@]}" -U pip "setuptools<81" wheel ninja
  # torch first: on this kind of machine a CPU build lies in pip's find-links; elsewhere PyPI's build is used.
  "${PIP[@]}" "torch==$TORCH_VERSION" numpy "opencv-python-headless>=4.8,<5" "mmengine==0.10.7"

  TORCH_TAG=$("$VPY" -c 'import torch; print(torch.__version__.replace("+", "_") + "-cuda" + (torch.version.cuda or "none"))')
  PYTAG=$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  WHEELS=$CACHE/wheels/$PYTAG-torch$TORCH_TAG
  mkdir -p "$WHEELS"
  MMCV_WHEEL=$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$MMCV_WHEEL" ]; then
    say "building mmcv $MMCV_VERSION with ops from source for torch $TORCH_TAG (11-13 minutes on 2 cores; once)"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    pip_quiet download --no-deps --no-build-isolation --no-binary :all: -d "$BUILD" "mmcv==$MMCV_VERSION" \
      || die "could not download the mmcv $MMCV_VERSION source from PyPI"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    SRC=$BUILD/mmcv-$MMCV_VERSION
    # torch >= 2.10 headers need C++20; mmcv hard-codes -std=c++17 (CXXFLAGS cannot override it).
    sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    grep -q -- '-std=c++20' "$SRC/setup.py" || die "mmcv setup.py layout changed: the C++ standard patch did not apply"
    # with a CUDA torch, build the CUDA ops too, even on a machine (or image build) without a GPU
    SOURCES=("$SRC"/mmcv/ops/csrc/pytorch/*.cpp "$SRC"/mmcv/ops/csrc/pytorch/cpu/*.cpp)
    if [[ "$TORCH_TAG" != *-cudanone ]]; then
      export FORCE_CUDA=1
      SOURCES+=("$SRC"/mmcv/ops/csrc/pytorch/cuda/*.cu "$SRC"/mmcv/ops/csrc/pytorch/cuda/*.cpp)
    fi
    # the compiler's output (thousands of lines of warnings) goes to a log; a progress line every 30 s instead
    LOG=$CACHE/mmcv-build.log
    say "compiler output: $LOG"
    progress() {
      while sleep 30; do
        say "  mmcv: $(find "$SRC/build" -name '*.o' 2>/dev/null | wc -l) of ${#SOURCES[@]} sources compiled"
      done
    }
    progress &
    PROGRESS=$!
    trap 'kill "$PROGRESS" 2>/dev/null || true; rm -rf "$BUILD"' EXIT
    if ! (cd "$SRC" && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$VPY" -m pip wheel -v --no-build-isolation \
          --no-deps -w "$BUILD/out" .) > "$LOG" 2>&1; then
      tail -n 30 "$LOG" >&2
      die "building mmcv failed (the end of its log is above; all of it: $LOG); a C++ compiler (g++ >= 10) and Python headers are needed"
    fi
    kill "$PROGRESS" 2>/dev/null || true
    # copy then rename, so an interrupted copy never leaves a broken wheel in the cache
    for whl in "$BUILD"/out/mmcv-*.whl; do cp "$whl" "$WHEELS/.partial" && mv "$WHEELS/.partial" "$WHEELS/$(basename "$whl")"; done
    MMCV_WHEEL=$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl | head -1)
    say "cached $MMCV_WHEEL"
  else
    say "reusing cached $MMCV_WHEEL"
  fi
  "${PIP[@]}" "$MMCV_WHEEL"

  say "installing platepipe and its dependencies"
  # (PYTHONWARNINGS: setuptools' notes on building platepipe itself, nothing a user can act on)
  if [ "${PLATEPIPE_EDITABLE:-1}" = 1 ]; then PYTHONWARNINGS=ignore "${PIP[@]}" -e "$ROOT[local,test]"
  else PYTHONWARNINGS=ignore "${PIP[@]}" "$ROOT[serve]"; fi
  HEADLESS=$("$VPY" -c 'from importlib.metadata import version; print(version("opencv-python-headless"))')
  "${PIP[@]}" --force-reinstall --no-deps "opencv-python-headless==$HEADLESS"

  if [ "${PLATEPIPE_EDITABLE:-1}" = 1 ]; then
    # KServe's storage initializer (the kserve-storage package its container runs) in an environment of its
    # own, as in the cluster: it pins google-cloud-storage<3. tests/test_container.py lays out /mnt/models with it.
    say "installing KServe's storage initializer (kserve-storage $KSERVE_STORAGE_VERSION) in $VENV/storage-initializer"
    [ -x "$VENV/storage-initializer/bin/python" ] || "$PY" -m venv "$VENV/storage-initializer"
    "$VENV/storage-initializer/bin/python" -m pip install -q "kserve-storage==$KSERVE_STORAGE_VERSION" \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) || die "could not install kserve-storage $KSERVE_STORAGE_VERSION"
  fi

  say "checking the set-up"
  "$VENV/bin/platepipe" doctor || die "the set-up check failed (see above)"
  echo "$INPUTS_HASH" > "$STAMP"
  say "ready: $VENV"
}

main "$@"
