"""A running job that no worker has touched for longer than the visibility
timeout (a pool process killed by the hard time limit) is reported failed."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis

from lesions.jobs import JobRecord, JobRepository, JobState, new_job_id, utcnow
from lesions.settings import Settings
from service.routers.jobs import abandon_after_s

pytestmark = pytest.mark.integration


def store_running_job(stack, silent_for_s: float) -> str:
    jobs = JobRepository(redis.Redis.from_url(stack.redis_url), stack.extra_env["TUMORTRACK_KEY_PREFIX"])
    stamp = utcnow() - timedelta(seconds=silent_for_s)
    record = JobRecord(id=new_job_id(), kind="segmentation", engine="classical", state=JobState.running, stage="segmenting", created_at=stamp, updated_at=stamp, started_at=stamp)
    # Written directly: the repository's update() would refresh updated_at.
    jobs.client.set(f"{jobs.prefix}:job:{record.id}", record.model_dump_json())
    jobs.mark_active(record.id, record.tenant)
    return record.id


def test_silent_running_job_is_given_up(client, stack):
    limit = abandon_after_s(Settings())
    lost = store_running_job(stack, silent_for_s=limit + 5)
    busy = store_running_job(stack, silent_for_s=limit - 120)

    lost_job = client.get(f"/v1/jobs/{lost}").json()
    busy_job = client.get(f"/v1/jobs/{busy}").json()

    assert lost_job["state"] == "failed"
    assert lost_job["error"]["code"] == "time_limit"
    assert busy_job["state"] == "running"
    client.delete(f"/v1/jobs/{busy}")
