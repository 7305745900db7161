#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU and driver:
#
#   docker/gpu-check.sh [--repository DIR] [-- extra args for docker/gpu_check.py]
#
# 1. makes a fresh virtualenv (GPU_CHECK_VENV, default /tmp/fusionserve-gpu-venv)
#    with the GPU wheels: a CUDA build of torch from the PyTorch index and the
#    server with the `gpu` extra (onnxruntime-gpu, never next to onnxruntime);
#    with GPU_CHECK_WHEELS=DIR it installs offline from that wheel folder;
# 2. builds the default model repository if no --repository is given;
# 3. runs docker/gpu_check.py: CUDA provider really used by the ONNX Runtime
#    session, torch sees the GPU, `pytest -m gpu`, the serving benchmark on GPU
#    instances; prints one table (paste it into docs/deployment.md).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${GPU_CHECK_VENV:-/tmp/fusionserve-gpu-venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_CUDA_INDEX="${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu130}"
ONNXRUNTIME_GPU_VERSION="${ONNXRUNTIME_GPU_VERSION:-1.31.1}"
repository=""
if [[ "${1:-}" == "--repository" ]]; then
    repository="$2"
    shift 2
fi
[[ "${1:-}" == "--" ]] && shift

command -v nvidia-smi >/dev/null || { echo "gpu-check: nvidia-smi not found: no GPU here" >&2; exit 2; }
nvidia-smi -L

rm -rf "$VENV"
python3 -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q)
if [[ -n "${GPU_CHECK_WHEELS:-}" ]]; then
    pip+=(--no-index --find-links "$GPU_CHECK_WHEELS")
    "${pip[@]}" "torch==${TORCH_VERSION}"
else
    "${pip[@]}" --index-url "$TORCH_CUDA_INDEX" "torch==${TORCH_VERSION}"
fi
# The torch extra (training/export deps) with torch already satisfied, the gpu
# extra, and the test tools; onnx builds the check's own tiny graph.
"${pip[@]}" --constraint docker/constraints.txt -e ".[gpu,torch,dev,test]" \
    "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" onnx pyyaml
if "$VENV/bin/python" -c "import importlib.metadata as m; m.version('onnxruntime')" 2>/dev/null; then
    echo "gpu-check: the CPU onnxruntime got into the venv next to onnxruntime-gpu" >&2
    exit 2
fi

if [[ -z "$repository" ]]; then
    repository="$VENV/model-repository"
    "$VENV/bin/fusionserve" build-repo --out "$repository"
fi
exec "$VENV/bin/python" docker/gpu_check.py --repository "$repository" "$@"
