"""The Celery application of the workers.

Concurrency model: one task per worker process at a time (prefetch 1), late
acknowledgement, and a message whose worker process dies is rejected back to
the queue, so a killed job runs again on another process. Time limits and the
Redis visibility timeout derive from one number (see lesions.settings).
Weights are loaded once per worker process, when the process starts.
"""

from __future__ import annotations

from celery import Celery

from lesions.settings import get_settings


def create_celery_app() -> Celery:
    settings = get_settings()
    app = Celery("tumortrack", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_s,
        task_soft_time_limit=settings.soft_time_limit_s,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


app = create_celery_app()
