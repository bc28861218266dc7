"""A real longitudinal MR pair over HTTP: two FLAIR studies of one multiple
sclerosis patient, acquired on different grids (36 slices of 4 mm, then 46 of
3 mm) and in different head positions.

The data gives white-matter lesion changes as a mask in a common space, and
for each study the affine transform between that space and the study. The test
maps four lesions into the first study as the baseline mask, clicks two other
lesions in the second study, and checks the result against where the known
transforms put each lesion.
"""

from __future__ import annotations

import json

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import require_shared
from tests.integration.conftest import wait_for_job

pytestmark = pytest.mark.integration

# Components of the change mask (26-connected, in cc3d order) used as baseline
# lesions, and those clicked in the follow-up as new lesions. All of them lie
# inside both studies' fields of view.
BASELINE_IDS = (2, 3, 7, 9)
CLICKED_IDS = (1, 11)

# Largest distance between a tracked lesion's centroid and where the two known
# transforms put the baseline centroid: about 7 voxels in-plane or under two
# slices. The errors measured here were 1.2 to 3.4 mm.
MAX_CENTROID_ERROR_MM = 5.0


@pytest.fixture(scope="module")
def study_pair():
    root = require_shared("data", "ms_longitudinal_patient01")
    baseline = sitk.ReadImage(str(root / "study1_FLAIR.nii.gz"), sitk.sitkFloat32)
    followup = sitk.ReadImage(str(root / "study2_FLAIR.nii.gz"), sitk.sitkFloat32)
    changes = sitk.ReadImage(str(root / "gt_lesion_change_coregistered.nii.gz"))

    # Each file maps points of the common space to points of its study, as ITK
    # resampling expects, so its inverse carries a study's points to the common space.
    common_to_baseline = sitk.ReadTransform(str(root / "study1_FLAIR_to_common_space.txt"))
    common_to_followup = sitk.ReadTransform(str(root / "study2_FLAIR_to_common_space.txt"))

    components = cc3d.connected_components(sitk.GetArrayFromImage(changes) > 0, connectivity=26).astype(np.uint16)
    labels = sitk.GetImageFromArray(components)
    labels.CopyInformation(changes)
    on_baseline = sitk.GetArrayFromImage(sitk.Resample(labels, baseline, common_to_baseline.GetInverse(), sitk.sitkNearestNeighbor, 0))
    on_followup = sitk.GetArrayFromImage(sitk.Resample(labels, followup, common_to_followup.GetInverse(), sitk.sitkNearestNeighbor, 0))

    def baseline_to_followup(point):
        return common_to_followup.TransformPoint(common_to_baseline.GetInverse().TransformPoint(point))

    return {"root": root, "baseline": baseline, "followup": followup, "on_baseline": on_baseline, "on_followup": on_followup, "map_point": baseline_to_followup}


def centroid_mm(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    index_zyx = np.argwhere(mask).mean(axis=0)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(index_zyx[::-1].tolist()))


def test_mr_pair_tracks_and_adds_new(client, study_pair, tmp_path):
    baseline_mask = np.where(np.isin(study_pair["on_baseline"], BASELINE_IDS), study_pair["on_baseline"], 0).astype(np.uint16)
    mask_image = sitk.GetImageFromArray(baseline_mask)
    mask_image.CopyInformation(study_pair["baseline"])
    sitk.WriteImage(mask_image, str(tmp_path / "baseline_mask.nii.gz"))
    clicks = []
    for position, component in enumerate(CLICKED_IDS):
        z, y, x = np.argwhere(study_pair["on_followup"] == component).mean(axis=0)
        clicks.append({"id": position + 1, "point": {"x": float(x), "y": float(y), "z": float(z)}})
    files = [
        ("baseline", ("study1.nii.gz", (study_pair["root"] / "study1_FLAIR.nii.gz").read_bytes())),
        ("followups", ("study2.nii.gz", (study_pair["root"] / "study2_FLAIR.nii.gz").read_bytes())),
        ("baseline_mask", ("mask.nii.gz", (tmp_path / "baseline_mask.nii.gz").read_bytes())),
    ]

    response = client.post("/v1/trackings", files=files, data={"followup_prompts": json.dumps({"frame": "voxel", "lesions": clicks})})
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"], timeout_s=600)
    assert job["state"] == "succeeded", job["error"]

    tracked_path = tmp_path / "mask_t1.nii.gz"
    tracked_path.write_bytes(client.get(f"/v1/jobs/{job['id']}/artifacts/mask_t1.nii.gz").content)
    tracked = sitk.ReadImage(str(tracked_path))
    assert tracked.GetSize() == study_pair["followup"].GetSize()
    assert tracked.GetSpacing() == pytest.approx(study_pair["followup"].GetSpacing(), abs=1e-6)
    assert tracked.GetDirection() == pytest.approx(study_pair["followup"].GetDirection(), abs=1e-6)
    labels = sitk.GetArrayFromImage(tracked)

    rows = client.get(f"/v1/jobs/{job['id']}/artifacts/correspondence.json").json()["followups"][0]["lesions"]
    statuses = {row["lesion_id"]: row["status"] for row in rows}
    new_ids = sorted(lesion_id for lesion_id, status in statuses.items() if status == "new")
    assert {lesion_id: statuses[lesion_id] for lesion_id in BASELINE_IDS} == {lesion_id: "tracked" for lesion_id in BASELINE_IDS}
    assert new_ids == [max(BASELINE_IDS) + 1, max(BASELINE_IDS) + 2]

    for lesion_id in BASELINE_IDS:
        expected = study_pair["map_point"](centroid_mm(study_pair["baseline"], baseline_mask == lesion_id))
        error = np.linalg.norm(centroid_mm(study_pair["followup"], labels == lesion_id) - expected)
        assert error <= MAX_CENTROID_ERROR_MM, f"lesion {lesion_id}: centroid {error:.1f} mm from the known position"
    for new_id, component in zip(new_ids, CLICKED_IDS):
        found = labels == new_id
        assert np.count_nonzero(study_pair["on_followup"][found] == component) > 0, f"new lesion {new_id} misses the clicked lesion"
