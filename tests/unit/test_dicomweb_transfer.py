"""How the worker's DICOMweb requests turn HTTP failures into job error codes.

A small HTTP server on loopback plays the PACS and responds to every request
with one status. The integration tests use a real Orthanc.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lesions.dicomweb_reference import DicomwebReference
from lesions.dicomweb_servers import DicomwebServer
from ops.stack import free_port
from worker.dicomweb_transfer import DicomwebError, retrieve_series

STUDY = "1.2.826.0.1.3680043.8.498.10"
SERIES = "1.2.826.0.1.3680043.8.498.11"
REFERENCE = DicomwebReference("pacs", STUDY, SERIES)


@pytest.fixture
def fake_pacs():
    """Start a loopback server that responds to each GET with ``state['status']`` and records the headers."""
    state = {"status": 503, "headers": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state["headers"].append(dict(self.headers))
            self.send_response(state["status"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    yield state
    server.shutdown()
    server.server_close()


def retrieve_error(server: DicomwebServer, tmp_path) -> DicomwebError:
    with pytest.raises(DicomwebError) as caught:
        retrieve_series(REFERENCE, server, tmp_path, "image", max_bytes=10**9)
    return caught.value


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [
        (503, "dicomweb_server_error", True),
        (500, "dicomweb_server_error", True),
        (429, "dicomweb_server_error", True),
        (401, "dicomweb_auth_failed", False),
        (403, "dicomweb_auth_failed", False),
        (404, "dicomweb_series_not_found", False),
        (400, "dicomweb_request_failed", False),
    ],
)
def test_status_becomes_error_code(fake_pacs, tmp_path, status, code, transient):
    fake_pacs["status"] = status

    error = retrieve_error(DicomwebServer(url=fake_pacs["url"]), tmp_path)

    assert error.code == code
    assert error.transient is transient
    assert "'pacs'" in error.message
    assert STUDY not in error.message
    assert SERIES not in error.message
    assert len(fake_pacs["headers"]) == 1


def test_response_without_content_type(fake_pacs, tmp_path):
    fake_pacs["status"] = 200

    error = retrieve_error(DicomwebServer(url=fake_pacs["url"]), tmp_path)

    assert error.code == "dicomweb_request_failed"
    assert error.transient is False
    assert not (tmp_path / "image_dicom_files.json").exists()


def test_connection_refused_is_transient(tmp_path):
    error = retrieve_error(DicomwebServer(url=f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=5), tmp_path)

    assert error.code == "dicomweb_unreachable"
    assert error.transient is True
    assert "could not be reached" in error.message


def test_bearer_token_sent(fake_pacs, tmp_path):
    fake_pacs["status"] = 404

    retrieve_error(DicomwebServer(url=fake_pacs["url"], token="tok-456"), tmp_path)

    assert fake_pacs["headers"][0]["Authorization"] == "Bearer tok-456"


def test_basic_credentials_sent(fake_pacs, tmp_path):
    fake_pacs["status"] = 404

    retrieve_error(DicomwebServer(url=fake_pacs["url"], username="svc", password="pw"), tmp_path)

    assert fake_pacs["headers"][0]["Authorization"] == "Basic c3ZjOnB3"
