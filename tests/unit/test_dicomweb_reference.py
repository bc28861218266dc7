"""DICOMweb references and server configuration: what the gateway accepts and rejects."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from lesions.dicomweb_reference import DicomwebReference, is_valid_uid, parse_dicomweb_reference
from lesions.errors import InputError
from lesions.settings import Settings

STUDY = "1.2.826.0.1.3680043.8.498.10"
SERIES = "1.2.826.0.1.3680043.8.498.11"
SERVERS = {"pacs": object()}


def reference_json(**overrides) -> str:
    return json.dumps({"dicomweb": {"server": "pacs", "study_uid": STUDY, "series_uid": SERIES, **overrides}})


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("2.25.329800735698586629295641978511506172918", True),
        ("1.0.3", True),
        ("1." + "2" * 62, True),
        ("1." + "2" * 63, False),
        ("1.02.3", False),
        ("1..2", False),
        ("1.2.", False),
        (".1.2", False),
        ("1.2a.3", False),
        ("1", False),
        ("1.2 ", False),
    ],
)
def test_uid_syntax(uid, valid):
    assert is_valid_uid(uid) is valid


def test_reference_round_trip():
    reference = parse_dicomweb_reference(reference_json(), SERVERS, "image_reference")

    assert reference == DicomwebReference("pacs", STUDY, SERIES)
    assert DicomwebReference.from_options(reference.to_options()) == reference
    assert reference.to_options()["kind"] == "dicomweb"


@pytest.mark.parametrize(
    ("raw", "field", "code"),
    [
        ("{not json", "image_reference", "invalid_json"),
        (json.dumps({"server": "pacs"}), "image_reference", "invalid_input"),
        (json.dumps({"dicomweb": "pacs"}), "image_reference", "invalid_input"),
        (reference_json(url="http://elsewhere/"), "image_reference.dicomweb", "invalid_input"),
        (reference_json(server="other"), "image_reference.dicomweb.server", "unknown_dicomweb_server"),
        (reference_json(server=""), "image_reference.dicomweb.server", "invalid_input"),
        (json.dumps({"dicomweb": {"server": "pacs", "series_uid": SERIES}}), "image_reference.dicomweb.study_uid", "missing_field"),
        (reference_json(study_uid="1.2.abc"), "image_reference.dicomweb.study_uid", "invalid_uid"),
        (reference_json(series_uid=12345), "image_reference.dicomweb.series_uid", "invalid_input"),
    ],
)
def test_reference_rejected(raw, field, code):
    with pytest.raises(InputError) as caught:
        parse_dicomweb_reference(raw, SERVERS, "image_reference")

    assert caught.value.field == field
    assert caught.value.code == code
    assert caught.value.status == 422


def test_unknown_server_lists_configured():
    with pytest.raises(InputError) as caught:
        parse_dicomweb_reference(reference_json(server="other"), {"pacs": object(), "archive": object()}, "image_reference")

    assert "['archive', 'pacs']" in caught.value.message


def test_unknown_server_without_configuration():
    with pytest.raises(InputError) as caught:
        parse_dicomweb_reference(reference_json(), {}, "image_reference")

    assert "has none" in caught.value.message


def test_servers_from_environment(monkeypatch):
    servers = {
        "pacs": {"url": "https://pacs.example.org/dicom-web/", "username": "svc", "password": "pw-123", "timeout_s": 12},
        "cloud": {"url": "http://127.0.0.1:9000/dicomweb", "token": "tok-456"},
    }
    monkeypatch.setenv("TUMORTRACK_DICOMWEB_SERVERS", json.dumps(servers))

    settings = Settings()

    pacs, cloud = settings.dicomweb_servers["pacs"], settings.dicomweb_servers["cloud"]
    assert pacs.url == "https://pacs.example.org/dicom-web"
    assert pacs.password.get_secret_value() == "pw-123"
    assert pacs.timeout_s == 12
    assert cloud.token.get_secret_value() == "tok-456"
    assert cloud.timeout_s == 60
    assert "pw-123" not in repr(settings)
    assert "tok-456" not in repr(settings)


def test_servers_default_to_none(monkeypatch):
    monkeypatch.delenv("TUMORTRACK_DICOMWEB_SERVERS", raising=False)

    assert Settings().dicomweb_servers == {}


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({"url": "ftp://pacs.example.org"}, "http:// or https://"),
        ({"url": "https://user:pw-123@pacs.example.org"}, "must not contain credentials"),
        ({"url": "https://pacs.example.org", "password": "pw-123"}, "username and password must be given together"),
        ({"url": "https://pacs.example.org", "username": "svc", "password": "pw-123", "token": "tok"}, "not both"),
        ({"url": "https://pacs.example.org", "timeout_s": 0}, "greater than 0"),
        ({"url": "https://pacs.example.org", "verify": False, "password": "pw-123", "username": "svc"}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_server_configuration(monkeypatch, server, expected):
    monkeypatch.setenv("TUMORTRACK_DICOMWEB_SERVERS", json.dumps({"pacs": server}))

    with pytest.raises(ValidationError) as caught:
        Settings()

    assert expected in str(caught.value)
    assert "pw-123" not in str(caught.value)


def test_invalid_server_name(monkeypatch):
    monkeypatch.setenv("TUMORTRACK_DICOMWEB_SERVERS", json.dumps({"my pacs": {"url": "https://pacs.example.org"}}))

    with pytest.raises(ValidationError) as caught:
        Settings()

    assert "'my pacs' is invalid" in str(caught.value)
