# Gateway image: FastAPI + Celery client only, no torch.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY lesions ./lesions
COPY service ./service
COPY ops ./ops
RUN pip install --no-cache-dir .

ENV TUMORTRACK_STORE_DIR=/data/store
EXPOSE 8000
CMD ["uvicorn", "service.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
