#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a GPU machine that has torch (and most of the stack) but older
# versions of the libraries scalabl is tested with, and no network. Two halves:
#
#   benchmarks/gpu_run.sh wheels     # here, with the package index: the wheels, into wheels/gpu (~15 MB)
#   benchmarks/gpu_run.sh check OUT  # there, from the repository root, with wheels/gpu carried along
#
# "check" installs the carried wheels into /tmp/site (never touching the machine's own packages, torch
# included), then runs the check with the working tree's scalabl and writes OUT/gpu_check.{json,md}.
set -euo pipefail
WHEELS=wheels/gpu
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"  # the GPU machine's python3
# what this repository is tested with (its CI's pip list) and the machine has in other versions
PACKAGES=(transformers==5.25.0 peft==0.21.2 huggingface_hub==2.4.0 accelerate==1.16.0 platformdirs==4.14.9
          httpx2==2.16.2 httpcore2==2.16.2 click==8.5.1 kernels==0.19.1 truststore==0.10.5 tomlkit==0.15.3)
case "${1:-}" in
  wheels)
    mkdir -p "$WHEELS"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" "${PACKAGES[@]}"
    du -sh "$WHEELS"
    ;;
  check)
    OUT="${2:?usage: gpu_run.sh check OUT}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
    PYTHONUNBUFFERED=1 PYTHONPATH="src:/tmp/site" python3 benchmarks/gpu_check.py "$OUT"
    ;;
  *)
    echo "usage: $0 wheels | check OUT" >&2
    exit 2
    ;;
esac
