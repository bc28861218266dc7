"""Demo and benchmark inputs: a real CT from ../shared/data when present, else a synthetic phantom.

Prompts for a real case are derived from its ground-truth mask: the bounding
box of each lesion plus 2 voxels per side, which is how a reader would draw
a box around it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]
BOX_MARGIN_VOXELS = 2


def shared_dir() -> Path:
    return Path(os.environ.get("TUMORTRACK_SHARED_DIR", REPO_ROOT.parent / "shared"))


@dataclass
class DemoCase:
    name: str
    image: Path
    prompts: Path
    truth: Path | None
    synthetic: bool


def box_prompts_from_mask(mask: np.ndarray, min_voxels: int = 27) -> dict:
    """Return TumorTrack prompt JSON with one voxel box per connected lesion of ``mask`` [z, y, x]."""
    import cc3d

    components = cc3d.connected_components(mask > 0, connectivity=26)
    lesions = []
    for label, extent in enumerate(cc3d.statistics(components)["bounding_boxes"]):
        if label == 0 or int((components == label).sum()) < min_voxels:
            continue
        z, y, x = extent
        low = [max(s.start - BOX_MARGIN_VOXELS, 0) for s in (x, y, z)]
        high = [min(s.stop + BOX_MARGIN_VOXELS, limit) for s, limit in zip((x, y, z), mask.shape[::-1])]
        lesions.append({"id": len(lesions) + 1, "box": {"min": dict(zip("xyz", low)), "max": dict(zip("xyz", high))}})
    return {"frame": "voxel", "lesions": lesions}


def real_case(workdir: Path) -> DemoCase | None:
    case_dir = shared_dir() / "data" / "ibsi_sts_019"
    image, truth = case_dir / "ct_image.nii.gz", case_dir / "ct_mask.nii.gz"
    if not (image.exists() and truth.exists()):
        return None
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(truth)))
    prompts = workdir / "ibsi_sts_019_prompts.json"
    prompts.write_text(json.dumps(box_prompts_from_mask(mask), indent=2))
    return DemoCase("ibsi_sts_019 (soft-tissue sarcoma CT, IBSI, CC BY 3.0)", image, prompts, truth, synthetic=False)


def phantom_case(workdir: Path, seed: int = 7) -> DemoCase:
    """Write a synthetic CT: a soft-tissue body with two spherical lesions, and box prompts for them."""
    rng = np.random.default_rng(seed)
    shape = (40, 120, 140)  # z, y, x
    spacing = (0.8, 0.8, 2.5)  # x, y, z in mm
    z, y, x = np.indices(shape)
    body = ((x - 70) / 62) ** 2 + ((y - 60) / 50) ** 2 <= 1
    ct = np.where(body, 40.0, -1000.0) + rng.normal(0, 12, shape)

    truth = np.zeros(shape, np.uint8)
    for label, (cx, cy, cz, radius_mm, hu) in enumerate([(50, 55, 20, 12.0, 110.0), (95, 70, 18, 8.0, -10.0)], start=1):
        inside = ((x - cx) * spacing[0]) ** 2 + ((y - cy) * spacing[1]) ** 2 + ((z - cz) * spacing[2]) ** 2 <= radius_mm**2
        ct[inside] = hu + rng.normal(0, 12, int(inside.sum()))
        truth[inside] = label

    image_path, truth_path = workdir / "phantom_ct.nii.gz", workdir / "phantom_truth.nii.gz"
    for array, path in ((ct.astype(np.float32), image_path), (truth, truth_path)):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing(spacing)
        volume.SetOrigin((-56.0, -48.0, -50.0))
        sitk.WriteImage(volume, str(path))

    prompts = workdir / "phantom_prompts.json"
    prompts.write_text(json.dumps(box_prompts_from_mask(truth), indent=2))
    return DemoCase("synthetic phantom (generated; not a real scan)", image_path, prompts, truth_path, synthetic=True)


@dataclass
class TrackingCase:
    name: str
    baseline: Path
    followup: Path
    baseline_mask: Path


def tracking_case(workdir: Path, segmentation: DemoCase) -> TrackingCase:
    """Return a baseline/follow-up pair: the shared fixture pair when present, else a shifted copy of the demo CT."""
    fixture = shared_dir() / "fixtures" / "lesionlocator-reference" / "inputs"
    if (fixture / "images" / "example_ct_fu.nii.gz").exists():
        return TrackingCase(
            "TotalSegmentator example CT and a follow-up moved by (-5, +4, -10) voxels in (x, y, z); the 'lesions' are five organs",
            fixture / "images" / "example_ct.nii.gz",
            fixture / "images" / "example_ct_fu.nii.gz",
            fixture / "prompts" / "instance_mask" / "example_ct.nii.gz",
        )
    return _shifted_followup(workdir, segmentation)


def _shifted_followup(workdir: Path, segmentation: DemoCase) -> TrackingCase:
    """Make a follow-up by moving the demo CT 3 voxels in-plane, keeping its geometry (synthetic)."""
    image = sitk.ReadImage(str(segmentation.image))
    array = sitk.GetArrayFromImage(image)
    moved = np.roll(array, shift=(3, -2), axis=(1, 2))
    followup = sitk.GetImageFromArray(moved)
    followup.CopyInformation(image)
    followup_path = workdir / "followup_shifted.nii.gz"
    sitk.WriteImage(followup, str(followup_path))
    return TrackingCase(f"{segmentation.name}, follow-up made by shifting it (synthetic)", segmentation.image, followup_path, segmentation.truth)
