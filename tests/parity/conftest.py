"""Locate the LesionLocator reference fixtures, and skip the parity tests when they are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.parity.reference_data import reference_root


@pytest.fixture(scope="module")
def reference_dir() -> Path:
    root = reference_root()
    if not root.is_dir():
        pytest.skip(f"{root} is absent: the parity tests need the LesionLocator reference fixtures next to the repository")
    return root
