# syntax=docker/dockerfile:1
# llm-sidecar container image.
#   docker build -t llm-sidecar:dev .
# Stage 1 builds wheels for the project and every dependency; stage 2 installs them into a slim runtime
# with no compiler, no pip cache and no build context. The image runs as UID 10001 with a read-only
# root filesystem: the only writable path it needs is TMPDIR=/tmp, which Kubernetes backs with an
# emptyDir (the Helm chart and k8s/ manifests mount one).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler only for dependencies that ship no wheel for this platform; it stays in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# README* rather than README.md: the package builds without it (it is only metadata), the COPY does not.
COPY pyproject.toml README* ./
COPY sidecar ./sidecar
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="llm-sidecar" \
      org.opencontainers.image.description="LLM gateway sidecar: OpenAI/Anthropic APIs in, any provider out, with failover" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TMPDIR=/tmp
# Install from the wheels of stage 1 without copying them into a layer; no index is consulted.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels llm-sidecar \
 && groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sidecar
USER 10001:10001
WORKDIR /tmp
EXPOSE 4000 4001
STOPSIGNAL SIGTERM
ENTRYPOINT ["llm-sidecar", "serve"]
CMD ["--config", "/etc/llm-sidecar/config.yaml"]
