"""Celery worker: tasks, engines and the job pipeline. Torch lives here only."""
