# syntax=docker/dockerfile:1
#
# fusionserve images. Targets:
#
#   cpu   (default) python slim + onnxruntime; torch only with --build-arg WITH_TORCH=1
#   gpu   NVIDIA CUDA runtime + cuDNN + onnxruntime-gpu + a CUDA build of torch
#   demo  the cpu image with the default model repository baked in
#
#   docker build --target cpu  -t fusionserve:cpu .
#   docker build --target gpu  -t fusionserve:gpu .
#   docker build --target demo -t fusionserve:demo .
#
# Every base image is a build argument, so the CPU target can be built against a
# local base (docker/local-base.sh makes one with debootstrap; see
# docs/deployment.md). Exact Python versions come from docker/constraints.txt
# and, hashed, docker/requirements-cpu.txt (regenerate both with
# docker/update-constraints.sh); pin the base images by digest
# in production (`--build-arg PYTHON_BASE=python:3.11-slim-bookworm@sha256:...`).

ARG PYTHON_BASE=python:3.11-slim-bookworm
ARG CUDA_BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- sources
# The project sources the install stages share: only what `pip install .` needs.
FROM scratch AS sources
WORKDIR /src
COPY pyproject.toml README.m[d] ./
# The import packages are fusionserve.service and fusionserve.models: fusionserve/service
# and fusionserve/models are relative symlinks that COPY keeps as links; they resolve
# here because service/ and models/ are copied next to fusionserve/, and the wheel
# that `pip install .` builds carries the real files under fusionserve/.
COPY service ./service
COPY models ./models
COPY fusionserve ./fusionserve
COPY proto ./proto
COPY docker/constraints.txt ./docker/constraints.txt

# ---------------------------------------------------------------- cpu-build
FROM ${PYTHON_BASE} AS cpu-build
ARG WITH_TORCH=0
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, from the hashed lock (docker/update-constraints.sh writes it), so
# this layer is reused while only the sources change. A venv keeps the install away
# from the distribution's Python (PEP 668) and is copied whole into the runtime stage.
COPY docker/requirements-cpu.txt ./docker/requirements-cpu.txt
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r docker/requirements-cpu.txt \
    && if [ "$WITH_TORCH" = "1" ]; then \
        /opt/venv/bin/pip install --index-url "$TORCH_CPU_INDEX" "torch==${TORCH_VERSION}"; \
    fi
# Then the sources; `pip check` fails the build when the lock no longer covers pyproject.
COPY --from=sources /src /src
RUN /opt/venv/bin/pip install --no-deps ".[cpu,media]" \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import onnxruntime, fusionserve.service.app; print('onnxruntime', onnxruntime.__version__)"

# ---------------------------------------------------------------- cpu
FROM ${PYTHON_BASE} AS cpu
LABEL org.opencontainers.image.title="fusionserve" \
      org.opencontainers.image.description="Inference server for multimodal fusion models (CPU, ONNX Runtime)" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid so Kubernetes `runAsNonRoot` can verify it.
RUN groupadd --gid 10001 fusionserve \
    && useradd --uid 10001 --gid fusionserve --create-home \
        --home-dir /home/fusionserve --shell /usr/sbin/nologin fusionserve \
    && mkdir -p /models \
    && chown fusionserve:fusionserve /models
COPY --from=cpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FUSIONSERVE_HOME=/home/fusionserve \
    FUSIONSERVE_MODEL_REPOSITORY=/models \
    FUSIONSERVE_HOST=0.0.0.0 \
    FUSIONSERVE_HTTP_PORT=8000 \
    FUSIONSERVE_GRPC_PORT=8001 \
    FUSIONSERVE_DRAIN_TIMEOUT_S=30
# HTTP (REST, KServe V2 REST, /metrics, /health/*) and gRPC. Prometheus scrapes
# /metrics on the HTTP port: there is no separate metrics port to expose.
EXPOSE 8000 8001
VOLUME ["/models"]
WORKDIR /home/fusionserve
USER 10001:10001
# Readiness, with the standard library only (no curl in the image).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["fusionserve", "healthcheck"]
# Exec form: the server is PID 1 and receives SIGTERM itself (it drains).
ENTRYPOINT ["fusionserve"]
CMD ["serve", "--model-repository", "/models"]

# ---------------------------------------------------------------- gpu-build
FROM ${CUDA_BASE} AS gpu-build
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu130
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ARG NVIDIA_ML_PY_VERSION=13.615.71
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python3=3.12.*" "python3-venv=3.12.*" \
    && rm -rf /var/lib/apt/lists/*
COPY --from=sources /src /src
WORKDIR /src
# torch first, from the PyTorch CUDA 13.0 index (it matches the base's CUDA and
# onnxruntime-gpu 1.31's CUDA 13 / cuDNN 9 build); then the server with the
# `gpu` extra. NVML (nvidia-ml-py) feeds the GPU utilisation/memory gauges.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url "$TORCH_CUDA_INDEX" "torch==${TORCH_VERSION}" \
    && /opt/venv/bin/pip install --constraint docker/constraints.txt ".[gpu,media]" \
        "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" "nvidia-ml-py==${NVIDIA_ML_PY_VERSION}" \
    && /opt/venv/bin/python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()"

# ---------------------------------------------------------------- gpu
FROM ${CUDA_BASE} AS gpu
LABEL org.opencontainers.image.title="fusionserve" \
      org.opencontainers.image.description="Inference server for multimodal fusion models (CUDA, ONNX Runtime + TorchScript)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends "python3=3.12.*" \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 fusionserve \
    && useradd --uid 10001 --gid fusionserve --create-home \
        --home-dir /home/fusionserve --shell /usr/sbin/nologin fusionserve \
    && mkdir -p /models \
    && chown fusionserve:fusionserve /models
COPY --from=gpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    FUSIONSERVE_HOME=/home/fusionserve \
    FUSIONSERVE_MODEL_REPOSITORY=/models \
    FUSIONSERVE_HOST=0.0.0.0 \
    FUSIONSERVE_HTTP_PORT=8000 \
    FUSIONSERVE_GRPC_PORT=8001 \
    FUSIONSERVE_DRAIN_TIMEOUT_S=30
EXPOSE 8000 8001
VOLUME ["/models"]
WORKDIR /home/fusionserve
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["fusionserve", "healthcheck"]
ENTRYPOINT ["fusionserve"]
CMD ["serve", "--model-repository", "/models"]

# ---------------------------------------------------------------- demo-repo
# Builds the default model repository offline (dataset, training, export: about
# five minutes on two cores). Needs torch and espeak-ng; neither reaches the
# runtime image, only the finished repository does.
FROM ${PYTHON_BASE} AS demo-repo
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends "espeak-ng=1.51*" \
    && rm -rf /var/lib/apt/lists/*
COPY --from=sources /src /src
WORKDIR /src
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url "$TORCH_CPU_INDEX" "torch==${TORCH_VERSION}" \
    && /opt/venv/bin/pip install --constraint docker/constraints.txt ".[cpu,torch,media]" \
    && /opt/venv/bin/fusionserve build-repo --out /opt/model-repository

# ---------------------------------------------------------------- demo
# The cpu image with the default repository baked in (not under the /models
# volume, whose content a mounted volume would hide).
FROM cpu AS demo
COPY --from=demo-repo --chown=10001:10001 /opt/model-repository /opt/fusionserve/model-repository
ENV FUSIONSERVE_MODEL_REPOSITORY=/opt/fusionserve/model-repository
CMD ["serve", "--model-repository", "/opt/fusionserve/model-repository"]

# The default target when none is given.
FROM cpu
