# VirNucPro on a CUDA machine. Build: docker compose build; run a step: docker compose run --rm <service>
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface VIRNUCPRO_MODELS=/app/models PYTHONUNBUFFERED=1
RUN python3 -m venv $VIRTUAL_ENV && pip install --no-cache-dir --upgrade pip

# torch pinned as in CI and pixi; the rest comes from pyproject.toml
RUN pip install --no-cache-dir torch==2.13.0
WORKDIR /app
# what pyproject.toml installs (the card and the package) first, so that a change elsewhere keeps this layer
COPY pyproject.toml README.md units.py ./
COPY virnucpro ./virnucpro
RUN pip install --no-cache-dir -e ".[test]"
COPY . .
