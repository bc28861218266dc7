"""Fixtures shared by every test folder: where ../shared is, and small images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("TUMORTRACK_SHARED_DIR", REPO_ROOT.parent / "shared"))


def require_shared(*parts: str) -> Path:
    """Return a path under ../shared, skipping the test when it is absent."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared test data next to the repository")
    return path


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> Path:
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def small_ct(tmp_path) -> Path:
    """A 40x30x20 (x, y, z) CT-like volume with a bright sphere at index (20, 15, 10)."""
    z, y, x = np.indices((20, 30, 40))
    array = np.where((x - 20) ** 2 + (y - 15) ** 2 + (z - 10) ** 2 <= 36, 120.0, 20.0).astype(np.float32)
    return write_image(tmp_path / "small_ct.nii.gz", array, spacing=(0.8, 0.8, 2.0), origin=(-10.0, 5.0, 30.0))
