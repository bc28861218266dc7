"""A private Orthanc PACS with its DICOMweb plugin, for tests.

Each server runs as a child process on a free loopback port, with its own
storage folder and configuration, HTTP basic authentication on, and the DICOM
(DIMSE) port off. Orthanc 1.10 has no option to bind to one address; it
listens on every interface but ``RemoteAccessAllowed: false`` makes it reject
clients other than localhost. The Debian packages are ``orthanc`` and
``orthanc-dicomweb``; tests skip with a message when they are absent.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ops.stack import free_port

PLUGIN_ENV = "TUMORTRACK_TEST_ORTHANC_DICOMWEB_PLUGIN"
PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*")
USERNAME = "tumortrack"


@dataclass
class OrthancServer:
    """A running Orthanc: where to reach it and how to log in."""

    process: subprocess.Popen
    port: int
    password: str
    folder: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return USERNAME, self.password

    def upload_instances(self, paths: list[Path]) -> None:
        """Store DICOM files through Orthanc's REST API (POST /instances)."""
        with httpx.Client(base_url=self.base_url, auth=self.auth, timeout=30) as client:
            for path in paths:
                response = client.post("/instances", content=path.read_bytes(), headers={"Content-Type": "application/dicom"})
                response.raise_for_status()

    def log_tail(self, lines: int = 30) -> str:
        log = self.folder / "orthanc.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def orthanc_executable() -> str | None:
    return shutil.which("Orthanc") or next((path for path in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(path, os.X_OK)), None)


def dicomweb_plugin() -> str | None:
    configured = os.environ.get(PLUGIN_ENV)
    if configured:
        return configured if Path(configured).is_file() else None
    for pattern in PLUGIN_CANDIDATES:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def require_orthanc() -> tuple[str, str]:
    """Return the Orthanc executable and the DICOMweb plugin, or skip the test."""
    executable = orthanc_executable()
    if executable is None:
        pytest.skip("Orthanc is not installed: these tests need a real PACS (Debian packages orthanc and orthanc-dicomweb)")
    plugin = dicomweb_plugin()
    if plugin is None:
        pytest.skip(f"the Orthanc DICOMweb plugin was not found in {PLUGIN_CANDIDATES} (Debian package orthanc-dicomweb; or set {PLUGIN_ENV})")
    return executable, plugin


def start_orthanc(folder: Path, timeout_s: float = 60.0) -> OrthancServer:
    """Start an Orthanc with DICOMweb in ``folder`` and wait until its REST API responds."""
    executable, plugin = require_orthanc()
    folder.mkdir(parents=True, exist_ok=True)
    port, password = free_port(), secrets.token_urlsafe(12)
    config = {
        "Name": "tumortrack-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USERNAME: password},
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "SaveJobs": False,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config))

    with open(folder / "orthanc.log", "wb") as log:
        process = subprocess.Popen([executable, str(config_path)], cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = OrthancServer(process=process, port=port, password=password, folder=folder)

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with code {process.returncode} during start-up:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"{server.base_url}/plugins", auth=server.auth, timeout=2)
            if response.status_code == 200:
                if "dicom-web" not in response.json():
                    server.stop()
                    raise RuntimeError(f"Orthanc started without its DICOMweb plugin ({plugin}):\n{server.log_tail()}")
                return server
        time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"Orthanc did not answer on port {port} within {timeout_s:.0f} s:\n{server.log_tail()}")
