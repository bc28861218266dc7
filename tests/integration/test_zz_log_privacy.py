"""No patient name, ID or birth date in any log line the suite's services wrote.

The file name sorts last, so it runs after the other integration tests and
scans their logs too. It also runs a DICOM job of its own with identifiers it
planted, so it cannot pass merely because no DICOM went through.
"""

from __future__ import annotations

import io
import json
import zipfile

import pydicom
import pytest
import SimpleITK as sitk

from ops.cases import box_prompts_from_mask
from ops.stack import REPO_ROOT
from tests.conftest import require_shared
from tests.integration.conftest import SESSION_STARTED, wait_for_job

pytestmark = pytest.mark.integration

PLANTED = {"PatientName": "Testpatient^Johanna^Marie", "PatientID": "PID-4471-9932", "PatientBirthDate": "19470311"}


def planted_series_zip(files) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in files:
            dataset = pydicom.dcmread(path)
            for keyword, value in PLANTED.items():
                setattr(dataset, keyword, value)
            buffer = io.BytesIO()
            dataset.save_as(buffer)
            bundle.writestr(path.name, buffer.getvalue())
    return archive.getvalue()


def test_logs_hold_no_patient_identifiers(client, stack):
    case = require_shared("data", "ibsi_sts_019")
    files = sorted((case / "dicom_ct" / "image").glob("*.dcm"))
    original = pydicom.dcmread(files[0], stop_before_pixels=True)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "ct_mask.nii.gz")))
    response = client.post("/v1/segmentations", files={"image": ("series.zip", planted_series_zip(files))}, data={"prompts": json.dumps(box_prompts_from_mask(truth))})
    assert response.status_code == 202, response.text
    assert wait_for_job(client, response.json()["id"])["state"] == "succeeded"

    identifiers = {value.lower() for value in [*PLANTED.values(), str(original.PatientName), str(original.PatientID)] if value}
    identifiers |= {part.lower() for part in PLANTED["PatientName"].split("^")}
    logs = [path for path in (REPO_ROOT / "var" / "test-logs").rglob("*.log") if path.stat().st_mtime >= SESSION_STARTED]
    assert any(path.parent == stack.log_dir for path in logs)

    leaks = []
    for path in logs:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            lowered = line.lower()
            leaks += [f"{path.name}:{number}: {identifier}" for identifier in identifiers if identifier in lowered]
    assert leaks == []
