#!/usr/bin/env bash
# GPU check on a machine with an NVIDIA GPU: fresh venv with the GPU wheels,
# CUDA provider really used by ONNX Runtime, torch sees the GPU, pytest -m gpu,
# the serving benchmark; prints one table. See docker/gpu-check.sh for options.
set -euo pipefail
exec "$(dirname "$0")/../docker/gpu-check.sh" "$@"
