"""DICOM uploads over HTTP: a zipped series and loose files give the same
masks as the NIfTI twin, and seg.dcm references the source series."""

from __future__ import annotations

import io
import json
import zipfile

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ops.cases import box_prompts_from_mask
from tests.conftest import require_shared
from tests.integration.conftest import wait_for_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sarcoma():
    case = require_shared("data", "ibsi_sts_019")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "ct_mask.nii.gz")))
    return {
        "nifti": case / "ct_image.nii.gz",
        "dicom_files": sorted((case / "dicom_ct" / "image").glob("*.dcm")),
        "prompts": json.dumps(box_prompts_from_mask(truth)),
    }


def run_job(client, files, prompts, tmp_path, name):
    response = client.post("/v1/segmentations", files=files, data={"prompts": prompts})
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    path = tmp_path / f"{name}.nii.gz"
    path.write_bytes(client.get(f"/v1/jobs/{job['id']}/artifacts/mask.nii.gz").content)
    return job, sitk.ReadImage(str(path))


def test_zip_and_files_match_nifti_twin(client, sarcoma, tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sarcoma["dicom_files"]:
            bundle.write(path, f"series/{path.name}")

    _, from_nifti = run_job(client, {"image": ("ct.nii.gz", sarcoma["nifti"].read_bytes())}, sarcoma["prompts"], tmp_path, "nifti")
    zip_job, from_zip = run_job(client, {"image": ("series.zip", archive.getvalue())}, sarcoma["prompts"], tmp_path, "zip")
    files = [("image", (path.name, path.read_bytes())) for path in reversed(sarcoma["dicom_files"])]
    _, from_files = run_job(client, files, sarcoma["prompts"], tmp_path, "files")

    for mask in (from_zip, from_files):
        assert mask.GetSize() == from_nifti.GetSize()
        assert np.allclose(mask.GetOrigin(), from_nifti.GetOrigin(), atol=1e-3)
        assert np.allclose(mask.GetSpacing(), from_nifti.GetSpacing(), atol=1e-4)
        assert np.allclose(mask.GetDirection(), from_nifti.GetDirection(), atol=1e-6)
        assert np.array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(from_nifti))
    assert "seg.dcm" in {artifact["name"] for artifact in zip_job["artifacts"]}


def test_seg_references_source_series(client, sarcoma, tmp_path):
    files = [("image", (path.name, path.read_bytes())) for path in sarcoma["dicom_files"]]
    job, mask = run_job(client, files, sarcoma["prompts"], tmp_path, "seg")
    seg_path = tmp_path / "seg.dcm"
    seg_path.write_bytes(client.get(f"/v1/jobs/{job['id']}/artifacts/seg.dcm").content)
    source = pydicom.dcmread(sarcoma["dicom_files"][0], stop_before_pixels=True)

    seg = hd.seg.segread(seg_path)

    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.PatientID == source.PatientID
    assert seg.number_of_segments == 1
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert int(np.count_nonzero(seg.get_volume().array)) == int(np.count_nonzero(sitk.GetArrayFromImage(mask)))


def test_two_series_need_series_uid(client, sarcoma, tmp_path):
    other = pydicom.dcmread(sarcoma["dicom_files"][0])
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    buffer = io.BytesIO()
    other.save_as(buffer)
    files = [("image", (path.name, path.read_bytes())) for path in sarcoma["dicom_files"]] + [("image", ("other.dcm", buffer.getvalue()))]

    response = client.post("/v1/segmentations", files=files, data={"prompts": sarcoma["prompts"]})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "multiple_series"
    assert other.SeriesInstanceUID in response.json()["error"]["message"]


def test_non_dicom_file_in_series(client, sarcoma):
    files = [("image", (path.name, path.read_bytes())) for path in sarcoma["dicom_files"][:5]] + [("image", ("notes.txt", b"hello"))]

    response = client.post("/v1/segmentations", files=files, data={"prompts": sarcoma["prompts"]})

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "image"


def test_zip_escaping_its_folder(client, sarcoma):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../../escape.dcm", sarcoma["dicom_files"][0].read_bytes())

    response = client.post("/v1/segmentations", files={"image": ("evil.zip", archive.getvalue())}, data={"prompts": sarcoma["prompts"]})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unsafe_archive"
