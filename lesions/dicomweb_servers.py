"""DICOMweb servers (PACS) that the operator configured, by name.

A job names a server; it never carries a URL. The workers therefore talk only
to hosts the operator listed in ``TUMORTRACK_DICOMWEB_SERVERS``, a JSON object
such as::

    {"pacs": {"url": "https://pacs.example.org/dicom-web",
              "username": "tumortrack", "password": "...", "timeout_s": 60}}

Credentials are ``SecretStr`` values, and validation errors never quote the
configured values, so neither a log line nor an error message shows them.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class DicomwebServer(BaseModel):
    """Address, credentials and timeout of one DICOMweb server."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, frozen=True)

    url: str = Field(description="Base URL of the DICOMweb service (QIDO-RS, WADO-RS and STOW-RS under it), http or https.")
    username: str | None = Field(None, description="User for HTTP basic authentication; needs password.")
    password: SecretStr | None = Field(None, description="Password for HTTP basic authentication.")
    token: SecretStr | None = Field(None, description="Bearer token sent as 'Authorization: Bearer ...'; excludes username and password.")
    timeout_s: float = Field(60.0, gt=0, description="Connect and read timeout of each request, in seconds.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not contain credentials; use the username and password keys")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _check_credentials(self) -> "DicomwebServer":
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        if self.token is not None and self.username is not None:
            raise ValueError("give either username and password or token, not both")
        return self


def check_server_names(servers: dict[str, DicomwebServer]) -> dict[str, DicomwebServer]:
    """Return ``servers`` unchanged, or raise ValueError naming the first invalid server name."""
    for name in servers:
        if not SERVER_NAME.match(name):
            raise ValueError(f"DICOMweb server name {name!r} is invalid: use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return servers
