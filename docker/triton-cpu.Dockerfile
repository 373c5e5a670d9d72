# syntax=docker/dockerfile:1
# Triton on CPU for one host without a GPU: the Triton server from the nvidia-pytriton wheel
# (Python backend only) started by `python -m triton_models.serve`, which serves the shipped
# TorchScript model through a Python-backend model (see triton_models/README.md).
# Build from the repo root: docker build -f docker/triton-cpu.Dockerfile -t inspectq-triton-cpu .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# torch from PyPI is the CUDA build (several GB); the CPU wheels of the same version come from
# PyTorch's own index. Pass --build-arg TORCH_INDEX_URL=https://pypi.org/simple to skip it.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY inspectq ./inspectq
COPY api ./api
COPY workers ./workers
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -e '.[model]'
COPY triton_models ./triton_models

RUN groupadd --system --gid 10001 inspectq \
    && useradd --system --uid 10001 --gid inspectq --home-dir /tmp --no-create-home inspectq
USER 10001:10001
EXPOSE 8000 8001 8002
# Bind every interface (the workers are other containers); the backend folder of links is
# built in /tmp because /app belongs to root.
CMD ["python", "-m", "triton_models.serve", "--address", "0.0.0.0", "--http-port", "8000", \
     "--grpc-port", "8001", "--metrics-port", "8002", "--backend-dir", "/tmp/triton-backend"]
