"""Property test: on random oblique, flipped and anisotropic geometries, a point
prompt given in world mm resolves to the voxel ITK names for that point, and a
label written there reads back at the same world position."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from lesions.geometry import ImageGeometry
from lesions.image_io import write_label_map
from lesions.prompts import parse_prompts

SIZE = (12, 10, 8)


@st.composite
def geometries(draw):
    rotation = Rotation.from_quat(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.1))).as_matrix()
    flips = np.diag([draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)])
    spacing = tuple(draw(st.floats(0.3, 5.0)) for _ in range(3))
    origin = tuple(draw(st.floats(-500, 500)) for _ in range(3))
    index = tuple(draw(st.integers(0, size - 1)) for size in SIZE)
    return rotation @ flips, spacing, origin, index


@settings(max_examples=60, deadline=None)
@given(geometries())
def test_world_point_lands_on_itk_voxel(tmp_path_factory, case):
    direction, spacing, origin, index = case
    image = sitk.Image(list(SIZE), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    world = image.TransformIndexToPhysicalPoint(index)

    prompt = parse_prompts(json.dumps({"frame": "world", "lesions": [{"id": 3, "point": dict(zip("xyz", world))}]}), ImageGeometry.of(image))[0]
    voxel = tuple(int(round(v)) for v in prompt.point)

    assert voxel == index
    # NOTE: ITK inverts direction x spacing with VNL's SVD, which fails on some
    # exactly axis-aligned flips ("suspicious return value from SVDC") and then
    # returns a garbage index; ITK is compared only where its answer is sane.
    itk_voxel = image.TransformPhysicalPointToIndex(world)
    if all(0 <= v < size for v, size in zip(itk_voxel, SIZE)):
        assert voxel == itk_voxel

    labels = np.zeros(SIZE[::-1], np.uint16)
    labels[voxel[2], voxel[1], voxel[0]] = 3
    path = tmp_path_factory.mktemp("mask") / "mask.nii.gz"
    write_label_map(labels, image, path)
    written = sitk.ReadImage(str(path))
    assert np.allclose(written.GetDirection(), image.GetDirection(), atol=1e-5)
    assert np.allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert np.allclose(written.TransformIndexToPhysicalPoint(voxel), world, atol=1e-3)
    assert sitk.GetArrayFromImage(written)[voxel[2], voxel[1], voxel[0]] == 3
