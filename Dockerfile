# One image, four services: the entrypoint is chosen by the container's command
# (`crm-customer`, `crm-interaction`, `crm-routing` or `crm-metrics`; see k8s/README.md).
#
#   docker build -t crmcore:0.1.0 .
#   docker run --rm -p 50051:50051 -e CRM_CUSTOMER_ADDRESS=0.0.0.0:50051 crmcore:0.1.0 crm-customer
#
# The image runs as an unprivileged user and works with a read-only root filesystem: the only
# place it writes is /tmp (mount an emptyDir there), where CRM_DATA_DIR points for SQLite.

# --- build: a wheel of the project (crm.v1 is generated from proto/ by hatch_build.py, with
# grpcio-tools from build-system.requires) installed into a self-contained virtual environment.
FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/crm

# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml hatch_build.py README.md ./
COPY proto ./proto
COPY libs ./libs
COPY services ./services

RUN /opt/crm/bin/pip install --no-cache-dir ".[postgres]" \
    && /opt/crm/bin/python -m compileall -q /opt/crm/lib

# --- runtime: the virtual environment and nothing else; no compilers, no sources, no pip cache.
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="crmcore" \
      org.opencontainers.image.description="Event-sourced CRM core: customer, interaction, routing and metrics gRPC services" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 crm \
    && useradd --system --uid 10001 --gid crm --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin crm

COPY --from=build /opt/crm /opt/crm

ENV PATH=/opt/crm/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CRM_DATA_DIR=/tmp/crm-data

WORKDIR /tmp
USER 10001:10001

# gRPC: customer, interaction, routing, metrics; Prometheus text of the metrics service.
EXPOSE 50051 50052 50053 50054 9464

# Kubernetes probes the standard gRPC health service natively (k8s/base); a Docker-level check
# would have to know which of the four services this container runs.
HEALTHCHECK NONE

CMD ["crm-customer"]
