# syntax=docker/dockerfile:1
# certscope container image: the daemon as a non-root user on a slim Python 3.11.
#
#   docker build -t ghcr.io/certscope/certscope:0.1.0 .
#   docker run --rm -p 9754:9754 -v "$PWD/certscope.yaml:/etc/certscope/config.yaml:ro" \
#       ghcr.io/certscope/certscope:0.1.0 run --config.file=/etc/certscope/config.yaml --web.listen-address=:9754
#
# The Helm chart (helm/certscope) uses this image: image.repository and appVersion
# match the tag above, and its securityContext runs it as the user made here.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the certscope wheel and the wheels of its dependencies
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter exporter
COPY probes probes
# Every dependency ships binary wheels for amd64 and arm64: nothing is compiled.
RUN python -m pip wheel --only-binary=:all: --wheel-dir /wheels .

# ---- runtime: no compiler, no build tools, no pip cache, a non-root user
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN groupadd --system --gid 10001 certscope \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin certscope
# The wheels are mounted for this one step, never copied into a layer; pip goes too.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels certscope \
    && python -m pip uninstall -y setuptools wheel pip
LABEL org.opencontainers.image.title="certscope" \
      org.opencontainers.image.description="Certificate observability for Prometheus" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
USER 10001:10001
# A read-only working directory; certscope writes nothing to disk.
WORKDIR /
EXPOSE 9754
ENTRYPOINT ["certscope"]
CMD ["run", "--web.listen-address=:9754"]
