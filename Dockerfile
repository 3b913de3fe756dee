# VirNucPro. Build: docker compose build (a CPU-only host: see docker-compose.cpu.yml); run a step:
# docker compose run --rm <service>. One CUDA stack: torch's wheels carry their own CUDA libraries, and the
# host's NVIDIA driver comes in through the container toolkit, so the base is a slim Python.
FROM python:3.12-slim AS runtime

# PyPI's torch is the CUDA 13 build (driver r580 or newer); https://download.pytorch.org/whl/cu126 gives the
# CUDA 12 one (driver r525 to r575), https://download.pytorch.org/whl/cpu the CPU one.
ARG TORCH_INDEX=https://pypi.org/simple
# the user the steps run as: the owner of what they write into the mounted folders
ARG UID=1000
ARG GID=1000

ENV PYTHONUNBUFFERED=1 HF_HOME=/cache/huggingface VIRNUCPRO_MODELS=/app/models
RUN pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX"
WORKDIR /app
# what pyproject.toml installs (the card, the package, the steps' scripts and the virnucpro command) first, so that a change elsewhere keeps this layer
COPY pyproject.toml README.md units.py prediction.py features_extract.py train_fastesm.py ./
COPY virnucpro ./virnucpro
COPY scripts ./scripts
RUN pip install --no-cache-dir .
COPY . .
RUN groupadd --gid "$GID" virnucpro && useradd --uid "$UID" --gid "$GID" --create-home virnucpro \
    && mkdir -p /cache/huggingface /app/data /app/models /app/reports \
    && chown -R virnucpro:virnucpro /cache /app
USER virnucpro

# the test suite's image (the compose service test): the runtime plus the test extra
FROM runtime AS test
USER root
RUN pip install --no-cache-dir ".[test]"
USER virnucpro
