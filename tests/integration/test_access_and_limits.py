"""API keys, tenant isolation, idempotency, queue limits and metrics, on a second
gateway with keys configured that shares the session's Redis and worker."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from ops.stack import free_port
from tests.integration.conftest import wait_for_job

pytestmark = pytest.mark.integration

KEYS = {"alpha": "key-alpha-0123456789", "beta": "key-beta-9876543210"}
UPLOAD_LIMIT_BYTES = 1_000_000
POINT = json.dumps({"frame": "voxel", "lesions": [{"id": 1, "point": {"x": 20, "y": 15, "z": 10}}]})


@pytest.fixture(scope="module")
def keyed_gateway(stack):
    """A gateway with API keys, on the session's Redis prefix and queue, so the same worker serves it."""
    port = free_port()
    keys = ",".join(f"{tenant}={key}" for tenant, key in KEYS.items())
    stack.start_gateway(port, extra_env={"TUMORTRACK_API_KEYS": keys, "TUMORTRACK_MAX_ACTIVE_JOBS_PER_TENANT": "3"}, name="keyed-gateway")
    base_url = f"http://127.0.0.1:{port}"
    stack.wait_http(base_url)
    yield base_url
    stack.stop_process("keyed-gateway")


def client_for(base_url, tenant=None, header="bearer"):
    headers = {}
    if tenant is not None:
        headers = {"Authorization": f"Bearer {KEYS[tenant]}"} if header == "bearer" else {"X-API-Key": KEYS[tenant]}
    return httpx.Client(base_url=base_url, headers=headers, timeout=60)


def submit(client, image, **headers):
    return client.post("/v1/segmentations", files={"image": (image.name, image.read_bytes())}, data={"prompts": POINT}, headers=headers)


def test_missing_and_invalid_keys_get_401(keyed_gateway, small_ct):
    with client_for(keyed_gateway) as anonymous:
        response = submit(anonymous, small_ct)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "missing_api_key"
        assert response.headers["WWW-Authenticate"] == "Bearer"

    with httpx.Client(base_url=keyed_gateway, headers={"X-API-Key": "wrong"}) as wrong:
        assert wrong.get("/v1/jobs/anything").json()["error"]["code"] == "invalid_api_key"


def test_tenants_see_only_their_jobs(keyed_gateway, small_ct):
    with client_for(keyed_gateway, "alpha") as alpha, client_for(keyed_gateway, "beta", header="x-api-key") as beta:
        job_id = submit(alpha, small_ct).json()["id"]
        job = wait_for_job(alpha, job_id)

        assert job["state"] == "succeeded"
        assert beta.get(f"/v1/jobs/{job_id}").status_code == 404
        assert beta.get(f"/v1/jobs/{job_id}/artifacts/mask.nii.gz").status_code == 404
        assert beta.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert alpha.get(f"/v1/jobs/{job_id}/artifacts/mask.nii.gz").status_code == 200


def test_idempotency_key_returns_first_job(keyed_gateway, small_ct):
    key = uuid.uuid4().hex
    with client_for(keyed_gateway, "alpha") as alpha, client_for(keyed_gateway, "beta") as beta:
        first = submit(alpha, small_ct, **{"Idempotency-Key": key})
        second = submit(alpha, small_ct, **{"Idempotency-Key": key})
        other_tenant = submit(beta, small_ct, **{"Idempotency-Key": key})

        assert first.status_code == second.status_code == 202
        assert second.json()["id"] == first.json()["id"]
        assert second.headers["Idempotent-Replayed"] == "true"
        assert other_tenant.json()["id"] != first.json()["id"]
        wait_for_job(alpha, first.json()["id"])
        wait_for_job(beta, other_tenant.json()["id"])


def test_idempotency_key_reused_for_other_input(keyed_gateway, small_ct):
    key = uuid.uuid4().hex
    other_prompt = POINT.replace('"id": 1', '"id": 2')
    assert other_prompt != POINT
    with client_for(keyed_gateway, "alpha") as alpha:
        first = submit(alpha, small_ct, **{"Idempotency-Key": key})
        other = alpha.post("/v1/segmentations", files={"image": (small_ct.name, small_ct.read_bytes())}, data={"prompts": other_prompt}, headers={"Idempotency-Key": key})
        other_image = alpha.post("/v1/segmentations", files={"image": (small_ct.name, small_ct.read_bytes() + b"\0")}, data={"prompts": POINT}, headers={"Idempotency-Key": key})

        assert first.status_code == 202
        for response in (other, other_image):
            assert response.status_code == 422
            assert response.json()["error"]["code"] == "idempotency_key_reused"
            assert response.json()["error"]["field"] == "Idempotency-Key"
            assert first.json()["id"] in response.json()["error"]["message"]
        wait_for_job(alpha, first.json()["id"])


def test_invalid_idempotency_key(keyed_gateway, small_ct):
    with client_for(keyed_gateway, "alpha") as alpha:
        response = submit(alpha, small_ct, **{"Idempotency-Key": "spaces are not allowed"})
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "Idempotency-Key"


def test_metrics_exposed(client, small_ct):
    job_id = submit(client, small_ct).json()["id"]
    wait_for_job(client, job_id)

    text = client.get("/metrics").text

    assert 'tumortrack_jobs_total{engine="classical",state="succeeded"}' in text
    assert 'tumortrack_stage_duration_seconds_bucket{le="+Inf",stage="segmenting"}' in text
    assert "tumortrack_workers 1.0" in text
    assert "tumortrack_queue_depth" in text


@pytest.fixture(scope="module")
def unserved_gateway(stack):
    """A gateway whose queue no worker consumes, so its jobs stay queued."""
    port = free_port()
    env = {"TUMORTRACK_QUEUE": f"unserved-{uuid.uuid4().hex[:8]}", "TUMORTRACK_KEY_PREFIX": f"unserved-{uuid.uuid4().hex[:8]}", "TUMORTRACK_MAX_ACTIVE_JOBS_PER_TENANT": "2", "TUMORTRACK_MAX_ACTIVE_JOBS_TOTAL": "100", "TUMORTRACK_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT_BYTES)}
    stack.start_gateway(port, extra_env=env, name="unserved-gateway")
    base_url = f"http://127.0.0.1:{port}"
    stack.wait_http(base_url)
    yield base_url
    stack.stop_process("unserved-gateway")


def test_tenant_queue_limit_answers_429(unserved_gateway, small_ct):
    with httpx.Client(base_url=unserved_gateway, timeout=60) as client:
        accepted = [submit(client, small_ct) for _ in range(2)]
        rejected = submit(client, small_ct)

        assert [response.status_code for response in accepted] == [202, 202]
        assert rejected.status_code == 429
        assert rejected.json()["error"]["code"] == "tenant_queue_full"
        assert int(rejected.headers["Retry-After"]) > 0

        assert client.delete(f"/v1/jobs/{accepted[0].json()['id']}").status_code == 204
        assert client.get(f"/v1/jobs/{accepted[0].json()['id']}").json()["state"] == "cancelled"
        replacement = submit(client, small_ct)
        assert replacement.status_code == 202

        # Leave the queue empty for the other tests on this gateway.
        for response in (accepted[1], replacement):
            assert client.delete(f"/v1/jobs/{response.json()['id']}").status_code == 204


def test_fifty_jobs_from_ten_clients_of_two_tenants(keyed_gateway, small_ct):
    """10 concurrent clients, 5 per tenant, 5 jobs each, against a limit of 3 unfinished jobs per tenant."""
    from concurrent.futures import ThreadPoolExecutor

    def run_client(tenant: str) -> tuple[list[str], int]:
        job_ids, throttled = [], 0
        with client_for(keyed_gateway, tenant) as http:
            while len(job_ids) < 5:
                response = submit(http, small_ct)
                if response.status_code == 429:
                    throttled += 1
                    assert response.json()["error"]["code"] == "tenant_queue_full"
                    time.sleep(0.2)  # a real client waits Retry-After seconds; the test keeps it short
                    continue
                assert response.status_code == 202, response.text
                job_ids.append(response.json()["id"])
            return job_ids, throttled

    tenants = ["alpha", "beta"] * 5
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(run_client, tenants))

    jobs_by_tenant = {"alpha": [], "beta": []}
    for tenant, (job_ids, _) in zip(tenants, results):
        jobs_by_tenant[tenant] += job_ids
    with client_for(keyed_gateway, "alpha") as alpha, client_for(keyed_gateway, "beta") as beta:
        clients = {"alpha": alpha, "beta": beta}
        for tenant, job_ids in jobs_by_tenant.items():
            other = clients["beta" if tenant == "alpha" else "alpha"]
            for job_id in job_ids:
                assert wait_for_job(clients[tenant], job_id)["state"] == "succeeded"
                assert other.get(f"/v1/jobs/{job_id}").status_code == 404

    assert sum(len(ids) for ids in jobs_by_tenant.values()) == 50
    assert len({job_id for ids in jobs_by_tenant.values() for job_id in ids}) == 50
    assert sum(throttled for _, throttled in results) > 0


def test_oversized_upload_gets_413(unserved_gateway, tmp_path):
    payload = tmp_path / "large.nii"
    payload.write_bytes(b"\0" * (2 * UPLOAD_LIMIT_BYTES))

    with httpx.Client(base_url=unserved_gateway, timeout=60) as client:
        declared = client.post("/v1/segmentations", files={"image": (payload.name, payload.read_bytes())}, data={"prompts": POINT})

        def chunks():
            # A well-formed multipart body without Content-Length, sent in pieces.
            yield b'--bound\r\nContent-Disposition: form-data; name="image"; filename="large.nii"\r\n\r\n'
            with open(payload, "rb") as handle:
                while block := handle.read(65536):
                    yield block
            yield b"\r\n--bound--\r\n"

        chunked = client.post("/v1/segmentations", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=bound"})

    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "request_too_large"
    assert chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "request_too_large"
