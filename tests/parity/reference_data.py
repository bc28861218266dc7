"""Readers for the official LesionLocator reference outputs used by the parity tests.

The reference folder lives next to the repository in
``../shared/fixtures/lesionlocator-reference``, or under
``$TUMORTRACK_SHARED_DIR/fixtures/lesionlocator-reference``. It contains
random-weight checkpoints in the official layout, and the masks and intermediate
arrays that the official code produced from them on CPU. The ``reference_dir`` fixture (conftest.py)
skips a test when it is absent.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
from pathlib import Path

import cc3d
import numpy as np
import SimpleITK as sitk

from lesions.prompt_types import LesionPrompt

REFERENCE_SUBDIR = Path("fixtures") / "lesionlocator-reference"
TINY_CHECKPOINT = Path("checkpoints") / "tiny" / "LesionLocatorCheckpoint"
# The official code splits the binary mask into 7 components after resampling.
# On the original grid it has 4, and only the first 3 are the same lesions in both.
BINARY_MASK_COMPONENTS_WITH_REFERENCE_MATCH = 3


def reference_root() -> Path:
    """Return the reference folder, which may not exist."""
    shared = os.environ.get("TUMORTRACK_SHARED_DIR")
    shared_dir = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / "shared"
    return shared_dir / REFERENCE_SUBDIR


def read_image(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path), sitk.sitkFloat32)


def read_mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def box_prompts_from_json(path: Path) -> list[LesionPrompt]:
    """Read official box prompts ``[z0, z1, y0, y1, x0, x1]`` (half-open) as LesionPrompts."""
    prompts = []
    for key, value in json.loads(path.read_text()).items():
        z0, z1, y0, y1, x0, x1 = (int(float(v)) for v in value["box"])
        prompts.append(LesionPrompt(int(key), "box", box_min=(x0, y0, z0), box_max=(x1, y1, z1)))
    return sorted(prompts, key=lambda p: p.lesion_id)


def point_prompts_from_json(path: Path) -> list[LesionPrompt]:
    """Read official point prompts ``[z, y, x]`` as LesionPrompts."""
    prompts = []
    for key, value in json.loads(path.read_text()).items():
        z, y, x = (float(v) for v in value["point"])
        prompts.append(LesionPrompt(int(key), "point", point=(x, y, z)))
    return sorted(prompts, key=lambda p: p.lesion_id)


def mask_prompts_from_labels(labels: np.ndarray) -> list[LesionPrompt]:
    """Return one mask prompt per label value > 0 of an instance map [z, y, x]."""
    return [
        LesionPrompt(int(value), "mask", mask=labels == value)
        for value in np.unique(labels)
        if value > 0
    ]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def case_inputs(reference_dir: Path, config: str) -> tuple[sitk.Image, list[LesionPrompt]]:
    """Return the image and prompts of one official run configuration (a key of prompt_transforms.json)."""
    inputs = reference_dir / "inputs"
    ct = read_image(inputs / "images" / "example_ct.nii.gz")
    padded_ct = read_image(inputs / "images_zeropad" / "example_ct_zeropad.nii.gz")

    if config == "box_json":
        return ct, box_prompts_from_json(inputs / "prompts" / "boxes" / "example_ct.json")
    if config == "point_json":
        return ct, point_prompts_from_json(inputs / "prompts" / "points" / "example_ct.json")
    if config == "box_instmask":
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / "prompts" / "instance_mask" / "example_ct.nii.gz")))
        return ct, mask_prompts_from_labels(labels)
    if config == "box_binmask":
        binary = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / "prompts" / "binary_mask" / "example_ct.nii.gz")))
        components = cc3d.connected_components((binary > 0).astype(np.uint8), connectivity=26)
        return ct, mask_prompts_from_labels(components)[:BINARY_MASK_COMPONENTS_WITH_REFERENCE_MATCH]
    if config == "box_zeropad":
        return padded_ct, box_prompts_from_json(inputs / "prompts_zeropad" / "boxes" / "example_ct_zeropad.json")
    if config == "point_zeropad":
        return padded_ct, point_prompts_from_json(inputs / "prompts_zeropad" / "points" / "example_ct_zeropad.json")
    raise ValueError(f"unknown reference configuration {config!r}")


TRACK_FIXTURE_CACHE = Path(os.environ.get("TUMORTRACK_FIXTURE_CACHE", "/tmp/tumortrack-fixture-cache"))
TRACK_CHECKPOINT_BYTES = 288_152_403


def track_checkpoint_dir(reference_dir: Path) -> Path:
    """Return a LesionLocatorCheckpoint folder with a decompressed LesionLocatorTrack, outside the repository.

    The fixtures ship the tracking checkpoint xz-compressed (21 MB instead of
    288 MB). It is decompressed once into ``TRACK_FIXTURE_CACHE/<sha256 of the
    .xz>/`` and reused by later runs. The other files are symlinks into the fixtures.
    """
    source = reference_dir / TINY_CHECKPOINT
    compressed = source / "LesionLocatorTrack" / "fold_0" / "checkpoint_final.pth.xz"
    digest = hashlib.sha256(compressed.read_bytes()).hexdigest()
    root = TRACK_FIXTURE_CACHE / digest[:16] / "LesionLocatorCheckpoint"
    checkpoint = root / "LesionLocatorTrack" / "fold_0" / "checkpoint_final.pth"
    if checkpoint.is_file() and checkpoint.stat().st_size == TRACK_CHECKPOINT_BYTES:
        return root

    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    _symlink(root / "LesionLocatorSeg", source / "LesionLocatorSeg")
    for name in ("dataset.json", "plans.json"):
        _symlink(root / "LesionLocatorTrack" / name, source / "LesionLocatorTrack" / name)

    # Decompress into a file of our own and rename it, so a concurrent run never reads half a file.
    partial = checkpoint.with_name(f"{checkpoint.name}.{os.getpid()}.partial")
    with lzma.open(compressed) as reader, partial.open("wb") as writer:
        shutil.copyfileobj(reader, writer, length=16 * 1024 * 1024)
    partial.replace(checkpoint)
    return root


def _symlink(link: Path, target: Path) -> None:
    try:
        link.symlink_to(target)
    except FileExistsError:
        pass
