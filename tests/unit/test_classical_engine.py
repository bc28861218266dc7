"""Unit tests of the classical engine on synthetic CT volumes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lesions.errors import InputError
from lesions.prompt_types import LesionPrompt
from worker.engines.base import EngineOptions
from worker.engines.classical import ClassicalEngine

SPHERE_HU = 90.0
BACKGROUND_HU = 20.0
NOISE_HU = 15.0
# Scanner blur, about the width of a CT point spread function.
BLUR_MM = 0.8


def synthetic_ct(
    size_xyz: tuple[int, int, int],
    spacing_xyz: tuple[float, float, float],
    centre_xyz: tuple[float, float, float],
    radius_mm: float,
    seed: int = 0,
) -> tuple[sitk.Image, np.ndarray]:
    """Return a noisy CT with one bright sphere, and the sphere's mask [z, y, x]."""
    spacing_zyx = np.asarray(spacing_xyz[::-1])
    grids = np.ogrid[tuple(slice(0, size) for size in size_xyz[::-1])]
    squared_mm = sum(((grid - c) * s) ** 2 for grid, c, s in zip(grids, centre_xyz[::-1], spacing_zyx))
    sphere = squared_mm <= radius_mm**2

    volume = np.where(sphere, SPHERE_HU, BACKGROUND_HU).astype(np.float32)
    volume = ndimage.gaussian_filter(volume, BLUR_MM / spacing_zyx)
    volume += np.random.default_rng(seed).normal(0.0, NOISE_HU, volume.shape).astype(np.float32)

    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing_xyz)
    return image, sphere


def box_around(mask: np.ndarray, lesion_id: int, padding: int = 2) -> LesionPrompt:
    """Return the box prompt of a mask's bounding box plus ``padding`` voxels, clipped to the image."""
    indexes = np.nonzero(mask)
    low = [max(int(axis.min()) - padding, 0) for axis in indexes]
    high = [min(int(axis.max()) + 1 + padding, size) for axis, size in zip(indexes, mask.shape)]
    return LesionPrompt(lesion_id=lesion_id, kind="box", box_min=tuple(low[::-1]), box_max=tuple(high[::-1]))


def dice(predicted: np.ndarray, reference: np.ndarray) -> float:
    return 2.0 * np.logical_and(predicted, reference).sum() / (predicted.sum() + reference.sum())


def run_engine(image: sitk.Image, prompts: list[LesionPrompt]) -> dict[int, np.ndarray]:
    return ClassicalEngine().segment(image, prompts, EngineOptions())


def test_status_ready_on_cpu():
    status = ClassicalEngine().status()

    assert status.name == "classical"
    assert status.ready
    assert status.device == "cpu"


def test_sphere_from_box():
    image, sphere = synthetic_ct((64, 64, 24), (0.8, 0.8, 2.5), (31.0, 33.0, 11.0), 12.0)

    mask = run_engine(image, [box_around(sphere, 1)])[1]

    assert dice(mask, sphere) > 0.9


def test_sphere_from_point():
    image, sphere = synthetic_ct((64, 64, 24), (0.8, 0.8, 2.5), (31.0, 33.0, 11.0), 12.0)
    prompt = LesionPrompt(lesion_id=1, kind="point", point=(31.0, 33.0, 11.0))

    mask = run_engine(image, [prompt])[1]

    assert dice(mask, sphere) > 0.9


def test_point_off_centre_still_finds_sphere():
    image, sphere = synthetic_ct((64, 64, 24), (0.8, 0.8, 2.5), (31.0, 33.0, 11.0), 12.0)
    # 4 mm from the centre, a third of the radius.
    prompt = LesionPrompt(lesion_id=1, kind="point", point=(36.0, 33.0, 11.0))

    mask = run_engine(image, [prompt])[1]

    assert dice(mask, sphere) > 0.8


def test_box_mask_stays_inside_box():
    image, sphere = synthetic_ct((64, 64, 24), (0.8, 0.8, 2.5), (31.0, 33.0, 11.0), 12.0)
    # The box cuts the sphere in half along x and ends two slices early along z.
    prompt = LesionPrompt(lesion_id=1, kind="box", box_min=(31, 16, 7), box_max=(50, 50, 14))

    mask = run_engine(image, [prompt])[1]

    outside = np.ones(mask.shape, dtype=bool)
    outside[prompt.zyx_slices()] = False
    assert mask.any()
    assert not mask[outside].any()


@pytest.mark.parametrize("spacing_xyz", [(1.0, 1.0, 1.0), (0.7, 0.7, 3.0), (0.6, 1.2, 2.0)])
def test_anisotropic_spacing_keeps_physical_volume(spacing_xyz):
    radius_mm = 11.0
    size_xyz = tuple(int(np.ceil(48.0 / s)) for s in spacing_xyz)
    centre_xyz = tuple(size / 2.0 for size in size_xyz)
    image, sphere = synthetic_ct(size_xyz, spacing_xyz, centre_xyz, radius_mm)
    point = LesionPrompt(lesion_id=2, kind="point", point=centre_xyz)

    masks = run_engine(image, [box_around(sphere, 1), point])

    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    sphere_ml = sphere.sum() * voxel_ml
    for lesion_id in (1, 2):
        assert dice(masks[lesion_id], sphere) > 0.85, f"lesion {lesion_id} at spacing {spacing_xyz}"
        volume_ml = masks[lesion_id].sum() * voxel_ml
        assert abs(volume_ml - sphere_ml) < 0.2 * sphere_ml, f"lesion {lesion_id}: {volume_ml:.2f} ml, sphere {sphere_ml:.2f} ml"


def test_output_matches_grid_and_prompt_ids():
    image, sphere = synthetic_ct((50, 40, 20), (0.9, 0.9, 2.5), (25.0, 20.0, 10.0), 9.0)
    prompts = [
        box_around(sphere, 7),
        LesionPrompt(lesion_id=3, kind="point", point=(25.0, 20.0, 10.0)),
        LesionPrompt(lesion_id=11, kind="mask", mask=sphere.copy()),
    ]
    progress = []

    masks = ClassicalEngine().segment(image, prompts, EngineOptions(), progress.append)

    assert set(masks) == {3, 7, 11}
    for lesion_id, mask in masks.items():
        assert mask.shape == (20, 40, 50), f"lesion {lesion_id}"
        assert mask.dtype == np.bool_, f"lesion {lesion_id}"
        assert mask.any(), f"lesion {lesion_id}"
    assert progress[-1] == pytest.approx(1.0)
    assert len(progress) == len(prompts)


def test_point_near_image_border():
    # The sphere's centre lies 2 mm inside the x = 0 face, so the image cuts it in half.
    image, sphere = synthetic_ct((64, 64, 24), (0.8, 0.8, 2.5), (2.5, 33.0, 11.0), 12.0)
    prompt = LesionPrompt(lesion_id=1, kind="point", point=(1.0, 33.0, 11.0))

    mask = run_engine(image, [prompt])[1]

    assert mask.shape == sphere.shape
    assert dice(mask, sphere) > 0.8


def test_box_clipped_at_image_corner():
    # The sphere ends one voxel short of the x = 0 and y = 0 faces, so the padded box is clipped there.
    image, sphere = synthetic_ct((40, 40, 16), (0.8, 0.8, 2.5), (8.0, 8.0, 8.0), 5.9)
    prompt = box_around(sphere, 1)

    mask = run_engine(image, [prompt])[1]

    assert prompt.box_min[:2] == (0, 0)
    assert dice(mask, sphere) > 0.85


def test_mask_prompt_drops_small_components():
    image, sphere = synthetic_ct((50, 40, 20), (0.9, 0.9, 2.5), (25.0, 20.0, 10.0), 9.0)
    prompt_mask = sphere.copy()
    prompt_mask[2, 2:4, 2:4] = True

    mask = run_engine(image, [LesionPrompt(lesion_id=1, kind="mask", mask=prompt_mask)])[1]

    assert np.array_equal(mask, sphere)


def test_point_outside_image_rejected():
    image, _ = synthetic_ct((30, 30, 10), (1.0, 1.0, 2.5), (15.0, 15.0, 5.0), 5.0)
    prompt = LesionPrompt(lesion_id=1, kind="point", point=(15.0, 40.0, 5.0))

    with pytest.raises(InputError, match="outside the image"):
        run_engine(image, [prompt])


def test_mask_prompt_on_wrong_grid_rejected():
    image, _ = synthetic_ct((30, 30, 10), (1.0, 1.0, 2.5), (15.0, 15.0, 5.0), 5.0)
    prompt = LesionPrompt(lesion_id=1, kind="mask", mask=np.ones((10, 30, 31), dtype=bool))

    with pytest.raises(InputError, match="does not match"):
        run_engine(image, [prompt])


def test_int16_image_accepted():
    image, sphere = synthetic_ct((50, 40, 20), (0.9, 0.9, 2.5), (25.0, 20.0, 10.0), 9.0)
    image = sitk.Cast(image, sitk.sitkInt16)

    mask = run_engine(image, [box_around(sphere, 1)])[1]

    assert dice(mask, sphere) > 0.9
