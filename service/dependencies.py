"""Shared objects of the gateway and their FastAPI dependency aliases.

The gateway talks to workers only through Redis: it sends tasks by name with
a Celery client that imports no worker code, and reads worker heartbeats for
readiness and engine status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, Request

from lesions.jobs import JobRepository
from lesions.settings import Settings
from lesions.store import JobStore


@dataclass
class GatewayContext:
    settings: Settings
    redis: redis.Redis
    jobs: JobRepository
    store: JobStore
    celery: Celery

    def send_task(self, task_name: str, job_id: str) -> None:
        self.celery.send_task(task_name, kwargs={"job_id": job_id}, queue=self.settings.queue)


def build_context(settings: Settings) -> GatewayContext:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)
    celery = Celery("tumortrack-gateway", broker=settings.redis_url)
    celery.conf.update(
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
    )
    return GatewayContext(
        settings=settings,
        redis=client,
        jobs=JobRepository(client, settings.key_prefix, settings.job_retention_s),
        store=JobStore(settings.store_dir),
        celery=celery,
    )


def get_context(request: Request) -> GatewayContext:
    return request.app.state.context


Context = Annotated[GatewayContext, Depends(get_context)]
