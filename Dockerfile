# syntax=docker/dockerfile:1
# MLX code location image (docs/deployment.md). Two variants from one file:
#   docker build -t mlx:cpu .                                   (CPU torch, the default)
#   docker build -t mlx:cuda --build-arg VARIANT=cuda .         (CUDA torch for GPU nodes)
# The same image serves the code location (`dagster code-server start`, the Helm chart's user
# deployment) and runs each Dagster run (the Kubernetes GPU run launcher's job_image).

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm

# ---- build: a virtual environment with MLX and its extras -----------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# CPU torch comes from PyTorch's CPU index (an unpinned torch from the default index would pull
# the multi-GB CUDA build); the CUDA variant takes the CUDA build, which bundles its CUDA
# libraries (the GPU driver comes from the node).
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ARG EXTRAS=postgres,snowflake,databricks,llm,mlflow,serving
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN case "$VARIANT" in \
      cpu) index="$TORCH_CPU_INDEX" ;; \
      cuda) index="$TORCH_CUDA_INDEX" ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 2 ;; \
    esac \
    && pip install --no-cache-dir --index-url "$index" "torch==${TORCH_VERSION}"
WORKDIR /opt/mlx
COPY pyproject.toml README.md ./
COPY mlx_plugins/ mlx_plugins/
COPY mlx_resources/ mlx_resources/
COPY mlx_assets/ mlx_assets/
# Editable, so mlx_resources.platform.REPO_ROOT is /opt/mlx (dagster.yaml, mlx.yaml beside it);
# torch stays at the pinned version (repeated here: a newer pip may otherwise upgrade it within
# pyproject's range, to a CUDA build from the default index).
RUN pip install --no-cache-dir -e ".[${EXTRAS}]" "torch==${TORCH_VERSION}" \
    && python -c "import torch, dagster_postgres; print('torch', torch.__version__)"
# The project's own bytecode (pip compiled site-packages; an editable install's sources are not,
# and PYTHONDONTWRITEBYTECODE keeps the code server from caching them): without it every process
# that loads the code location first compiles MLX's modules (~0.12x of `import dagster`).
# Checked by source hash, not mtime, so the copy into the runtime stage cannot make them stale.
RUN python -m compileall -q --invalidation-mode checked-hash mlx_plugins mlx_resources mlx_assets

# ---- runtime: no compilers, a non-root user ------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="mlx" \
      org.opencontainers.image.description="MLX code location (Dagster) - ${VARIANT}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 mlx \
    && useradd --system --uid 10001 --gid mlx --home-dir /home/mlx --create-home mlx \
    && mkdir -p /opt/dagster/dagster_home /var/lib/mlx \
    && chown -R mlx:mlx /opt/dagster /var/lib/mlx
COPY --from=build --chown=mlx:mlx /opt/venv /opt/venv
COPY --from=build --chown=mlx:mlx /opt/mlx /opt/mlx
COPY --chown=mlx:mlx dagster.yaml mlx.yaml workspace.yaml /opt/mlx/
COPY --chown=mlx:mlx deploy/dagster.prod.yaml /opt/mlx/deploy/dagster.prod.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    MLX_HOME=/var/lib/mlx \
    NUMBA_CACHE_DIR=/var/lib/mlx/cache/numba \
    MLX_COMPOSITION=/opt/mlx/mlx.yaml \
    MLX_VARIANT=${VARIANT}
WORKDIR /opt/mlx
USER 10001:10001
EXPOSE 4000
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s \
    CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]
# The code location; the Helm chart's user deployment passes its own arguments.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "mlx_assets.definitions", "--location-name", "mlx"]
