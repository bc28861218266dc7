# Worker image: Celery + torch. CUDA by default; `--build-arg TORCH_INDEX=cpu`
# builds a CPU-only image.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=cu128
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY lesions ./lesions
COPY service ./service
COPY worker ./worker
COPY ops ./ops
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/${TORCH_INDEX} --extra-index-url https://pypi.org/simple "torch==2.13.0" \
    && pip install --no-cache-dir ".[worker]"

ENV TUMORTRACK_STORE_DIR=/data/store
# One task per process at a time; raise --concurrency only with one GPU per process.
CMD ["celery", "-A", "worker.celery_app", "worker", "--loglevel=INFO", "--pool=prefork", "--concurrency=1", "--prefetch-multiplier=1", "--without-gossip", "--without-mingle"]
