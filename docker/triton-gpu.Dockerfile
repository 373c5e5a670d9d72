# syntax=docker/dockerfile:1
# NVIDIA's Triton Inference Server (libtorch backend, CUDA) with inspectq's model repository
# baked in, so an image tag pins server and model together. 25.11 is the newest release whose
# notes we checked; bump TRITON_TAG deliberately (the host's NVIDIA driver must support its
# CUDA version, see NVIDIA's release notes) and rerun the model tests against the new server.
# Build from the repo root: docker build -f docker/triton-gpu.Dockerfile -t inspectq-triton-gpu .

ARG TRITON_TAG=25.11-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}

# triton_models/repository is the GPU repository: inspectq_seg/config.pbtxt with
# platform "pytorch_libtorch" and inspectq_seg/<version>/model.pt (docs/model-contract.md).
COPY --chown=1000:1000 triton_models/repository /models

# triton-server (uid 1000) is the unprivileged user of NVIDIA's image.
USER 1000:1000
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none", \
     "--strict-readiness=true", "--exit-on-error=true"]
