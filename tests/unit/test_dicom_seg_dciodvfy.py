"""dciodvfy (Debian's dicom3tools) validates the SEG we write from the real CT series.

The source series itself carries an over-long Study ID, which the SEG copies
verbatim so that it stays the same study. Errors the source already has are
therefore allowed, and any other error fails the test.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from lesions.dicom_seg import write_dicom_seg
from lesions.dicom_series import read_dicom_series
from tests.conftest import require_shared


def dciodvfy_errors(path) -> set[str]:
    output = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return {line.strip() for line in (output.stdout + output.stderr).splitlines() if line.startswith("Error")}


def test_seg_passes_dciodvfy(tmp_path):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    files = sorted(require_shared("data", "ibsi_sts_019", "dicom_ct", "image").glob("*.dcm"))
    volume = read_dicom_series(files)
    labels = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, np.uint16)
    labels[20:25, 60:70, 60:70] = 1
    labels[30:33, 40:45, 80:90] = 2

    write_dicom_seg(labels, volume, [1, 2], tmp_path / "seg.dcm")

    assert dciodvfy_errors(tmp_path / "seg.dcm") <= dciodvfy_errors(files[0])
