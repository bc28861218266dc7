"""Jobs by DICOMweb reference against a real Orthanc: the worker retrieves the
series with WADO-RS, and the SEG it stores with STOW-RS is found in Orthanc
with QIDO-RS, referencing the source series.

The module starts its own Orthanc and its own stack, because the gateway and
the worker read the configured DICOMweb servers from their environment. The
last tests call the worker's transfer functions directly against the same
Orthanc, for cases that a job cannot reach cheaply.
"""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pydicom
import pytest
import redis
import SimpleITK as sitk
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass

from lesions.dicomweb_reference import DicomwebReference
from lesions.dicomweb_servers import DicomwebServer
from lesions.jobs import JobRepository
from ops.cases import box_prompts_from_mask
from ops.stack import free_port
from tests.conftest import require_shared
from tests.integration.conftest import start_test_stack, wait_for_job
from tests.orthanc_server import require_orthanc, start_orthanc
from worker.dicomweb_transfer import DicomwebError, retrieve_series, store_instance

pytestmark = pytest.mark.integration

SERVER = "orthanc"


@pytest.fixture(scope="module")
def sarcoma():
    case = require_shared("data", "ibsi_sts_019")
    files = sorted((case / "dicom_ct" / "image").glob("*.dcm"))
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "ct_mask.nii.gz")))
    return {
        "files": files,
        "study_uid": str(header.StudyInstanceUID),
        "series_uid": str(header.SeriesInstanceUID),
        "truth": truth,
        "prompts": json.dumps(box_prompts_from_mask(truth)),
    }


@pytest.fixture(scope="module")
def followup_series(tmp_path_factory, sarcoma):
    """A copy of the sarcoma series under new Series and SOP Instance UIDs, as a follow-up in the same study."""
    folder = tmp_path_factory.mktemp("followup")
    series_uid = pydicom.uid.generate_uid(prefix=None)
    files = []
    for path in sarcoma["files"]:
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = pydicom.uid.generate_uid(prefix=None)
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(folder / path.name)
        files.append(folder / path.name)
    return {"files": files, "series_uid": series_uid}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, sarcoma, followup_series):
    require_orthanc()
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        server.upload_instances(sarcoma["files"])
        server.upload_instances(followup_series["files"])
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pacs_stack(tmp_path_factory, orthanc):
    username, password = orthanc.auth
    servers = {
        SERVER: {"url": orthanc.dicomweb_url, "username": username, "password": password, "timeout_s": 30},
        "orthanc-wrong-password": {"url": orthanc.dicomweb_url, "username": username, "password": "not-the-password"},
        # Nothing listens on this port, so every connection is refused.
        "offline": {"url": f"http://127.0.0.1:{free_port()}/dicom-web", "timeout_s": 5},
    }
    stack = start_test_stack(tmp_path_factory, "dicomweb", {"TUMORTRACK_DICOMWEB_SERVERS": json.dumps(servers)})
    yield stack
    stack.stop()


@pytest.fixture
def pacs_client(pacs_stack):
    with httpx.Client(base_url=pacs_stack.base_url, timeout=60) as http:
        yield http


@pytest.fixture
def dicomweb(orthanc):
    """A DICOMweb client of the test's own, to look into Orthanc."""
    return DICOMwebClient(url=orthanc.dicomweb_url, session=create_session_from_user_pass(*orthanc.auth))


def reference(server=SERVER, study_uid=None, series_uid=None, sarcoma=None) -> str:
    return json.dumps({"dicomweb": {"server": server, "study_uid": study_uid or sarcoma["study_uid"], "series_uid": series_uid or sarcoma["series_uid"]}})


def submit(client, fields: dict, files: list | None = None):
    """POST a multipart segmentation request; text fields go as parts without a file name."""
    parts = [(name, (None, value)) for name, value in fields.items()] + (files or [])
    return client.post("/v1/segmentations", files=parts)


def slice_index_by_sop_uid(files) -> dict[str, int]:
    """Map each source SOP Instance UID to its slice index along the slice normal, as the series reader orders them."""
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    row, column = np.array(headers[0].ImageOrientationPatient[:3], float), np.array(headers[0].ImageOrientationPatient[3:], float)
    normal = np.cross(row, column)
    ordered = sorted(headers, key=lambda header: float(np.dot(normal, np.array(header.ImagePositionPatient, float))))
    return {str(header.SOPInstanceUID): z for z, header in enumerate(ordered)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_reference_job_stores_seg_in_orthanc(pacs_client, pacs_stack, sarcoma, dicomweb, tmp_path):
    response = submit(pacs_client, {"image_reference": reference(sarcoma=sarcoma), "prompts": sarcoma["prompts"], "store_seg": "true"})
    assert response.status_code == 202, response.text
    job = wait_for_job(pacs_client, response.json()["id"])
    assert job["state"] == "succeeded", job["error"]

    assert {"mask.nii.gz", "seg.dcm", "lesions.json"} <= {artifact["name"] for artifact in job["artifacts"]}
    assert len(job["dicomweb_stored"]) == 1
    stored = job["dicomweb_stored"][0]
    assert stored["artifact"] == "seg.dcm"
    assert stored["server"] == SERVER
    assert stored["study_instance_uid"] == sarcoma["study_uid"]

    mask_path = tmp_path / "mask.nii.gz"
    mask_path.write_bytes(pacs_client.get(f"/v1/jobs/{job['id']}/artifacts/mask.nii.gz").content)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))
    assert dice(mask > 0, sarcoma["truth"] > 0) > 0.6

    found = dicomweb.search_for_series(sarcoma["study_uid"], search_filters={"Modality": "SEG"})
    series_uids = [item["0020000E"]["Value"][0] for item in found]
    assert series_uids.count(stored["series_instance_uid"]) == 1

    [seg] = dicomweb.retrieve_series(sarcoma["study_uid"], stored["series_instance_uid"])
    assert seg.SOPInstanceUID == stored["sop_instance_uid"]
    assert seg.StudyInstanceUID == sarcoma["study_uid"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sarcoma["series_uid"]
    slice_of = slice_index_by_sop_uid(sarcoma["files"])
    referenced = {str(item.ReferencedSOPInstanceUID) for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= set(slice_of)

    # Each SEG frame names its source slice; it must equal the job's mask on that slice.
    frames = seg.pixel_array.reshape(-1, *mask.shape[1:])
    frame_slices = []
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source_uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        z = slice_of[source_uid]
        frame_slices.append(z)
        assert np.array_equal(frame.astype(bool), mask[z] == 1), f"SEG frame of slice {z} differs from mask.nii.gz"
    assert sorted(frame_slices) == [z for z in range(mask.shape[0]) if np.any(mask[z] == 1)]

    logs = "\n".join(pacs_stack.log_tail(name, lines=100000) for name in ("worker", "gateway"))
    assert f"job={job['id']} stage=retrieving server={SERVER}" in logs
    assert f"job={job['id']} stage=storing server={SERVER}" in logs
    for uid in (sarcoma["study_uid"], sarcoma["series_uid"], stored["sop_instance_uid"]):
        assert uid not in logs


def test_unknown_server(pacs_client, sarcoma):
    response = submit(pacs_client, {"image_reference": reference(server="elsewhere", sarcoma=sarcoma), "prompts": sarcoma["prompts"]})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unknown_dicomweb_server"
    assert error["field"] == "image_reference.dicomweb.server"
    assert SERVER in error["message"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("study_uid", "1.2.840.abc"),
        ("study_uid", "1.02.3"),
        ("series_uid", "1." + "2" * 64),
        ("series_uid", "1..2"),
    ],
)
def test_malformed_uid(pacs_client, sarcoma, key, value):
    body = {"server": SERVER, "study_uid": sarcoma["study_uid"], "series_uid": sarcoma["series_uid"], key: value}

    response = submit(pacs_client, {"image_reference": json.dumps({"dicomweb": body}), "prompts": sarcoma["prompts"]})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_uid"
    assert response.json()["error"]["field"] == f"image_reference.dicomweb.{key}"


def test_image_and_reference_together(pacs_client, sarcoma):
    files = [("image", (sarcoma["files"][0].name, sarcoma["files"][0].read_bytes()))]

    response = submit(pacs_client, {"image_reference": reference(sarcoma=sarcoma), "prompts": sarcoma["prompts"]}, files=files)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "conflicting_fields"
    assert response.json()["error"]["field"] == "image_reference"


def test_store_seg_needs_reference(pacs_client, sarcoma):
    files = [("image", (path.name, path.read_bytes())) for path in sarcoma["files"]]

    response = submit(pacs_client, {"prompts": sarcoma["prompts"], "store_seg": "true"}, files=files)

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "store_seg"


def test_series_uid_beside_reference(pacs_client, sarcoma):
    response = submit(pacs_client, {"image_reference": reference(sarcoma=sarcoma), "series_uid": sarcoma["series_uid"], "prompts": sarcoma["prompts"]})

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "series_uid"


def test_box_with_min_above_max_before_retrieval(pacs_client, sarcoma):
    prompts = {"frame": "voxel", "lesions": [{"id": 1, "box": {"min": {"x": 50, "y": 50, "z": 10}, "max": {"x": 40, "y": 60, "z": 20}}}]}

    response = submit(pacs_client, {"image_reference": reference(sarcoma=sarcoma), "prompts": json.dumps(prompts)})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_box"
    assert response.json()["error"]["field"] == "prompts.lesions[0].box"


def test_missing_series_fails_job(pacs_client, sarcoma):
    missing = pydicom.uid.generate_uid(prefix=None)

    response = submit(pacs_client, {"image_reference": reference(series_uid=missing, sarcoma=sarcoma), "prompts": sarcoma["prompts"]})
    assert response.status_code == 202, response.text
    job = wait_for_job(pacs_client, response.json()["id"])

    assert job["state"] == "failed"
    assert job["error"]["code"] == "dicomweb_series_not_found"
    assert SERVER in job["error"]["message"]
    assert missing not in job["error"]["message"]


def test_wrong_credentials_fail_job(pacs_client, sarcoma):
    response = submit(pacs_client, {"image_reference": reference(server="orthanc-wrong-password", sarcoma=sarcoma), "prompts": sarcoma["prompts"]})
    assert response.status_code == 202, response.text
    job = wait_for_job(pacs_client, response.json()["id"])

    assert job["state"] == "failed"
    assert job["error"]["code"] == "dicomweb_auth_failed"
    assert "HTTP 401" in job["error"]["message"]


def test_prompt_outside_retrieved_image_fails_job(pacs_client, sarcoma):
    # The series is 136 x 134 x 47 voxels; z = 60 lies past its last slice.
    prompts = {"frame": "voxel", "lesions": [{"id": 1, "box": {"min": {"x": 10, "y": 10, "z": 50}, "max": {"x": 20, "y": 20, "z": 60}}}]}

    response = submit(pacs_client, {"image_reference": reference(sarcoma=sarcoma), "prompts": json.dumps(prompts)})
    assert response.status_code == 202, response.text
    job = wait_for_job(pacs_client, response.json()["id"])

    assert job["state"] == "failed"
    assert job["error"]["code"] == "prompt_outside_image"
    assert job["error"]["message"].startswith("prompts.lesions[0].box:")


def test_unreachable_server_is_retried(pacs_client, pacs_stack, sarcoma):
    response = submit(pacs_client, {"image_reference": reference(server="offline", sarcoma=sarcoma), "prompts": sarcoma["prompts"]})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    jobs = JobRepository(redis.Redis.from_url(pacs_stack.redis_url), pacs_stack.extra_env["TUMORTRACK_KEY_PREFIX"])

    # The first retry starts 5 s after the refused connection.
    deadline = time.monotonic() + 120
    record = jobs.get(job_id)
    while record.attempts < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        record = jobs.get(job_id)

    assert record.attempts >= 2
    assert record.state.value == "running"
    assert record.error is None
    assert f"job={job_id} transient error DicomwebError: DICOMweb server 'offline' could not be reached" in pacs_stack.log_tail("worker", lines=100000)
    assert pacs_client.delete(f"/v1/jobs/{job_id}").status_code == 204


def submit_tracking(client, fields: list[tuple[str, str]], files: list | None = None):
    parts = [(name, (None, value)) for name, value in fields] + (files or [])
    return client.post("/v1/trackings", files=parts)


def test_tracking_by_reference_stores_both_segs(pacs_client, sarcoma, followup_series, dicomweb):
    fields = [
        ("baseline_reference", reference(sarcoma=sarcoma)),
        ("followup_references", reference(series_uid=followup_series["series_uid"], sarcoma=sarcoma)),
        ("prompts", sarcoma["prompts"]),
        ("store_seg", "true"),
    ]

    response = submit_tracking(pacs_client, fields)
    assert response.status_code == 202, response.text
    job = wait_for_job(pacs_client, response.json()["id"])
    assert job["state"] == "succeeded", job["error"]

    stored = {item["artifact"]: item for item in job["dicomweb_stored"]}
    assert sorted(stored) == ["seg_t0.dcm", "seg_t1.dcm"]
    correspondence = pacs_client.get(f"/v1/jobs/{job['id']}/artifacts/correspondence.json").json()
    [followup] = correspondence["followups"]
    assert [(row["lesion_id"], row["status"]) for row in followup["lesions"]] == [(1, "tracked")]

    expected_sources = {"seg_t0.dcm": sarcoma["series_uid"], "seg_t1.dcm": followup_series["series_uid"]}
    for artifact, source_series in expected_sources.items():
        [seg] = dicomweb.retrieve_series(sarcoma["study_uid"], stored[artifact]["series_instance_uid"])
        assert seg.Modality == "SEG"
        assert seg.SOPInstanceUID == stored[artifact]["sop_instance_uid"]
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series


def mask_upload(labels: np.ndarray, grid: sitk.Image, tmp_path) -> tuple[str, tuple[str, bytes]]:
    """Return a multipart part with ``labels`` written on the geometry of ``grid``."""
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.CopyInformation(grid)
    path = tmp_path / "mask.nii.gz"
    sitk.WriteImage(image, str(path))
    return ("baseline_mask", (path.name, path.read_bytes()))


def test_tracking_mask_with_referenced_baseline(pacs_client, sarcoma, followup_series, tmp_path):
    # The grid of the series as a DICOM reader builds it, which the mask must match.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in sarcoma["files"]])
    series = reader.Execute()
    fields = [("baseline_reference", reference(sarcoma=sarcoma)), ("followup_references", reference(series_uid=followup_series["series_uid"], sarcoma=sarcoma))]

    response = submit_tracking(pacs_client, fields, files=[mask_upload(sarcoma["truth"] > 0, series, tmp_path)])
    assert response.status_code == 202, response.text
    job = wait_for_job(pacs_client, response.json()["id"])

    assert job["state"] == "succeeded", job["error"]
    path = tmp_path / "mask_t0.nii.gz"
    path.write_bytes(pacs_client.get(f"/v1/jobs/{job['id']}/artifacts/mask_t0.nii.gz").content)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0, sarcoma["truth"] > 0)
    [followup] = pacs_client.get(f"/v1/jobs/{job['id']}/artifacts/correspondence.json").json()["followups"]
    assert [(row["lesion_id"], row["status"]) for row in followup["lesions"]] == [(1, "tracked")]


def test_tracking_mask_off_referenced_grid_fails_job(pacs_client, sarcoma, tmp_path):
    grid = sitk.Image([7, 6, 5], sitk.sitkUInt8)
    fields = [("baseline_reference", reference(sarcoma=sarcoma)), ("followup_references", reference(sarcoma=sarcoma))]

    response = submit_tracking(pacs_client, fields, files=[mask_upload(np.ones((5, 6, 7)), grid, tmp_path)])
    assert response.status_code == 202, response.text
    job = wait_for_job(pacs_client, response.json()["id"])

    assert job["state"] == "failed"
    assert job["error"]["code"] == "geometry_mismatch"
    assert job["error"]["message"].startswith("baseline_mask: is not on the baseline's grid")


def test_tracking_followup_uploads_and_references(pacs_client, sarcoma):
    fields = [("baseline_reference", reference(sarcoma=sarcoma)), ("followup_references", reference(sarcoma=sarcoma)), ("prompts", sarcoma["prompts"])]
    files = [("followups", (sarcoma["files"][0].name, sarcoma["files"][0].read_bytes()))]

    response = submit_tracking(pacs_client, fields, files=files)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "conflicting_fields"
    assert response.json()["error"]["field"] == "followup_references"


def test_tracking_followup_reference_unknown_server(pacs_client, sarcoma):
    fields = [("baseline_reference", reference(sarcoma=sarcoma)), ("followup_references", reference(server="elsewhere", sarcoma=sarcoma)), ("prompts", sarcoma["prompts"])]

    response = submit_tracking(pacs_client, fields)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unknown_dicomweb_server"
    assert response.json()["error"]["field"] == "followup_references[0].dicomweb.server"


def orthanc_server_config(orthanc, password=None) -> DicomwebServer:
    username, real_password = orthanc.auth
    return DicomwebServer(url=orthanc.dicomweb_url, username=username, password=password or real_password)


def test_retrieval_over_size_limit(orthanc, sarcoma, tmp_path):
    series = DicomwebReference(SERVER, sarcoma["study_uid"], sarcoma["series_uid"])

    with pytest.raises(DicomwebError) as caught:
        retrieve_series(series, orthanc_server_config(orthanc), tmp_path, "image", max_bytes=200_000)

    assert caught.value.code == "dicomweb_series_too_large"
    assert caught.value.transient is False
    assert not (tmp_path / "image_dicom_files.json").exists()


def test_retrieval_reused_on_retry(orthanc, sarcoma, tmp_path):
    series = DicomwebReference(SERVER, sarcoma["study_uid"], sarcoma["series_uid"])

    first = retrieve_series(series, orthanc_server_config(orthanc), tmp_path, "image", max_bytes=10**9)
    again = retrieve_series(series, orthanc_server_config(orthanc, password="not-the-password"), tmp_path, "image", max_bytes=10**9)

    assert first.instances == len(sarcoma["files"])
    assert first.reused is False
    assert again.reused is True
    assert again.bytes == first.bytes
    assert again.options == first.options == {"kind": "dicom", "file_list": "image_dicom_files.json", "series_uid": sarcoma["series_uid"]}


def test_store_with_wrong_password(orthanc, sarcoma):
    with pytest.raises(DicomwebError) as caught:
        store_instance(sarcoma["files"][0], SERVER, orthanc_server_config(orthanc, password="not-the-password"))

    assert caught.value.code == "dicomweb_auth_failed"
    assert "storing the SEG" in caught.value.message
