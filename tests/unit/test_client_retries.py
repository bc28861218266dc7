"""Client retries against a scripted HTTP server on 127.0.0.1: 429 and 503 with
Retry-After, backoff without it, connection errors, and errors not retried.

The client's sleep is replaced by a recorder, so the tests check the waits the
client chose without spending them.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ops.stack import free_port
from tumortrack_client import ApiError, RetryPolicy, ServiceUnavailableError, TumorTrackClient, TumorTrackError
from tumortrack_client.retry import parse_retry_after

JOB_ID = "job-123"
ACCEPTED = (202, {}, {"id": JOB_ID, "state": "queued", "links": {"self": f"/v1/jobs/{JOB_ID}"}})
QUEUE_FULL = (429, {"Retry-After": "7"}, {"error": {"code": "tenant_queue_full", "message": "This API key already has 3 unfinished jobs; wait for some to finish.", "field": None}})
NOT_READY = (503, {"Retry-After": "3"}, {"error": {"code": "not_ready", "message": "Redis is unreachable.", "field": None}})


def job_body(state: str) -> dict:
    artifacts = [{"name": "lesions.json", "media_type": "application/json", "size": 2, "url": f"/v1/jobs/{JOB_ID}/artifacts/lesions.json"}] if state == "succeeded" else []
    return {"id": JOB_ID, "kind": "segmentation", "state": state, "stage": None, "progress": 1.0 if state == "succeeded" else 0.0, "engine": "classical", "error": None, "warnings": [], "artifacts": artifacts}


class ScriptedServer:
    """HTTP server that responds to each request with the next scripted (status, headers, body) and records the request."""

    def __init__(self, port: int = 0):
        self.script: deque[tuple[int, dict, dict | bytes]] = deque()
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                body = self._read_body()
                server.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
                status, headers, payload = server.script.popleft()
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().strip(), 16)) > 0:
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_POST = do_DELETE = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"volume-bytes-" * 100)
    return path


def client_for(url: str, sleeps: list[float], **policy) -> TumorTrackClient:
    return TumorTrackClient(url, api_key="secret-key", retry=RetryPolicy(**policy), sleep=sleeps.append)


def test_submit_retries_429_after_retry_after(server, image):
    server.script.extend([QUEUE_FULL, QUEUE_FULL, ACCEPTED])
    sleeps: list[float] = []

    with client_for(server.url, sleeps) as client:
        submitted = client.submit_segmentation(image, {"lesions": []}, engine="classical")

    assert submitted.id == JOB_ID
    assert sleeps == [7.0, 7.0]
    assert [request["method"] for request in server.requests] == ["POST"] * 3
    keys = {request["headers"]["Idempotency-Key"] for request in server.requests}
    assert len(keys) == 1
    for request in server.requests:
        assert request["headers"]["Authorization"] == "Bearer secret-key"
        assert image.read_bytes() in request["body"]
        assert b'name="engine"' in request["body"]


def test_wait_honours_retry_after_on_503(server):
    server.script.extend([NOT_READY, (200, {}, job_body("running")), (200, {"Retry-After": "4"}, job_body("running")), (200, {}, job_body("succeeded"))])
    sleeps: list[float] = []

    with client_for(server.url, sleeps) as client:
        job = client.wait(JOB_ID, poll_interval_s=0.5)

    assert job.state == "succeeded"
    assert [a.name for a in job.artifacts] == ["lesions.json"]
    assert sleeps == [3.0, 0.5, 4.0]


def test_503_backoff_then_gives_up(server):
    server.script.extend([(503, {}, {"error": {"code": "not_ready", "message": "no worker is alive", "field": None}})] * 4)
    sleeps: list[float] = []

    with client_for(server.url, sleeps, max_retries=3, base_delay_s=1.0, max_delay_s=3.0) as client, pytest.raises(ServiceUnavailableError, match="responded 503 4 times: no worker is alive"):
        client.get_job(JOB_ID)

    assert len(server.requests) == 4
    assert len(sleeps) == 3
    for wait, ceiling in zip(sleeps, [1.0, 2.0, 3.0]):
        assert ceiling / 2 <= wait <= ceiling


def test_queue_full_gives_up_after_wait_budget(server, image):
    server.script.extend([QUEUE_FULL] * 3)
    sleeps: list[float] = []

    with client_for(server.url, sleeps, queue_full_max_wait_s=15) as client, pytest.raises(ServiceUnavailableError, match="queue stayed full for 14 s"):
        client.submit_segmentation(image, {"lesions": []})

    assert sleeps == [7.0, 7.0]


def test_connection_refused_retried_until_server_starts(image):
    port = free_port()
    started: list[ScriptedServer] = []
    sleeps: list[float] = []

    def sleep_then_start(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            started.append(ScriptedServer(port))
            started[0].script.append(ACCEPTED)

    try:
        with TumorTrackClient(f"http://127.0.0.1:{port}", sleep=sleep_then_start) as client:
            submitted = client.submit_segmentation(image, {"lesions": []})
    finally:
        for scripted in started:
            scripted.close()

    assert submitted.id == JOB_ID
    assert len(sleeps) == 2
    assert image.read_bytes() in started[0].requests[0]["body"]


def test_connection_refused_gives_up(image):
    sleeps: list[float] = []

    with client_for(f"http://127.0.0.1:{free_port()}", sleeps, max_retries=2) as client, pytest.raises(ServiceUnavailableError, match="no response from .* after 3 attempts"):
        client.submit_segmentation(image, {"lesions": []})

    assert len(sleeps) == 2


def test_422_raised_without_retry(server, image):
    server.script.append((422, {}, {"error": {"code": "prompt_outside_image", "message": "box lies outside the image", "field": "prompts.lesions[0].box"}}))
    sleeps: list[float] = []

    with client_for(server.url, sleeps) as client, pytest.raises(ApiError) as caught:
        client.submit_segmentation(image, {"lesions": []})

    assert caught.value.status == 422
    assert caught.value.code == "prompt_outside_image"
    assert caught.value.field == "prompts.lesions[0].box"
    assert sleeps == []
    assert len(server.requests) == 1


def test_download_retries_503_and_writes_file(server, tmp_path):
    server.script.extend([(200, {}, job_body("succeeded")), NOT_READY, (200, {}, b"[]")])
    sleeps: list[float] = []

    with client_for(server.url, sleeps) as client:
        paths = client.download_artifacts(client.get_job(JOB_ID), tmp_path / "out")

    assert paths == [tmp_path / "out" / "lesions.json"]
    assert paths[0].read_bytes() == b"[]"
    assert sleeps == [3.0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lesions.json"]


def test_environment_sets_url_and_key(server, monkeypatch):
    server.script.append((200, {}, job_body("queued")))
    monkeypatch.setenv("TUMORTRACK_URL", server.url)
    monkeypatch.setenv("TUMORTRACK_API_KEY", "from-env")

    with TumorTrackClient() as client:
        assert client.get_job(JOB_ID).state == "queued"

    assert server.requests[0]["headers"]["Authorization"] == "Bearer from-env"


@pytest.mark.parametrize("header,expected", [("12", 12.0), (" 0 ", 0.0), ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0), ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0), ("soon", None), ("", None), (None, None)])
def test_parse_retry_after(header, expected):
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=timezone.utc)

    assert parse_retry_after(header, now=now) == expected


def test_retry_after_capped_by_policy():
    assert RetryPolicy(max_retry_after_s=60).delay_s(1, "3600") == 60


def test_download_rejects_path_in_artifact_name(server, tmp_path):
    body = job_body("succeeded")
    body["artifacts"][0]["name"] = "../escape.json"
    server.script.append((200, {}, body))

    with client_for(server.url, []) as client, pytest.raises(TumorTrackError, match="not a plain file name"):
        client.download_artifacts(client.get_job(JOB_ID), tmp_path / "out")

    assert not (tmp_path / "escape.json").exists()
