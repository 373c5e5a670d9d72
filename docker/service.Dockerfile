# syntax=docker/dockerfile:1
# One image for the API (gunicorn) and the workers (celery) and the ops commands
# (the `inspectq` command: reconcile, deadletter, keys). No torch in here.
# Build from the repo root: docker build -f docker/service.Dockerfile -t inspectq-service .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY inspectq ./inspectq
COPY inspectq_cli ./inspectq_cli
COPY api ./api
COPY workers ./workers
# `inspectq model list|select|verify` read the repositories; torch (for `install`) is not here.
COPY triton_models ./triton_models
# Editable, as on a developer machine: the commands name files under /app
# (api/gunicorn.conf.py), so the source stays in one place and the venv points at it.
RUN /opt/venv/bin/pip install -e '.[api,worker]' \
    && /opt/venv/bin/python -m compileall -q /app

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 inspectq \
    && useradd --system --uid 10001 --gid inspectq --home-dir /tmp --no-create-home inspectq
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Compose and Kubernetes pass the real command; this default is the API.
CMD ["gunicorn", "--config", "api/gunicorn.conf.py", "--bind", "0.0.0.0:8080", "api.app:create_app()"]
