"""Uploads and artifacts are purged after the retention time, and the record shows when."""

from __future__ import annotations

import json
import time

import pytest
import redis

from lesions.jobs import JobRecord, JobRepository, utcnow
from lesions.retention import purge_expired
from lesions.store import JobStore
from tests.integration.conftest import wait_for_job

pytestmark = pytest.mark.integration

POINT = json.dumps({"frame": "voxel", "lesions": [{"id": 1, "point": {"x": 20, "y": 15, "z": 10}}]})


def test_expired_job_files_are_purged(client, stack, small_ct):
    job = wait_for_job(client, client.post("/v1/segmentations", files={"image": (small_ct.name, small_ct.read_bytes())}, data={"prompts": POINT}).json()["id"])
    store = JobStore(stack.store_dir)
    jobs = JobRepository(redis.Redis.from_url(stack.redis_url), stack.extra_env["TUMORTRACK_KEY_PREFIX"])
    retention_s = 3600

    kept = purge_expired(store, jobs, retention_s)
    purged = purge_expired(store, jobs, retention_s, now=time.time() + retention_s + 1)
    after = client.get(f"/v1/jobs/{job['id']}").json()
    artifact = client.get(f"/v1/jobs/{job['id']}/artifacts/mask.nii.gz")

    assert job["id"] not in kept
    assert job["id"] in purged
    assert not store.job_dir(job["id"]).exists()
    assert after["expired_at"] is not None
    assert after["artifacts"] == []
    assert artifact.status_code == 410
    assert artifact.json()["error"]["code"] == "artifacts_expired"


def test_unfinished_jobs_are_not_purged(tmp_path, stack):
    store = JobStore(tmp_path)
    store.create("still-queued")
    jobs = JobRepository(redis.Redis.from_url(stack.redis_url), stack.extra_env["TUMORTRACK_KEY_PREFIX"])
    jobs.create(JobRecord(id="still-queued", kind="segmentation", engine="classical", created_at=utcnow(), updated_at=utcnow()))

    assert purge_expired(store, jobs, 10, now=time.time() + 100) == []
    assert store.job_dir("still-queued").exists()
    jobs.delete("still-queued")
