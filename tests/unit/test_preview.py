"""Tests for lesions.preview: PNG layout, contour position and the tile of a lesion not found."""

from __future__ import annotations

import io

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from lesions.measurements import LesionMeasurement, measure_lesions
from lesions.preview import (
    CAPTION_HEIGHT_PX,
    CONTOUR_RGB,
    GAP_PX,
    GRID_COLUMNS,
    LONG_AXIS_RGB,
    MARGIN_MM,
    SHORT_AXIS_RGB,
    TILE_IMAGE_PX,
    TITLE_HEIGHT_PX,
    lesion_caption,
    render_preview,
)

TILE_HEIGHT_PX = TILE_IMAGE_PX + CAPTION_HEIGHT_PX

# Digitising a disc moves its edge by up to half a voxel diagonal (0.71 voxel). The
# contour covers the disc's innermost CONTOUR_WIDTH_PX pixels, 0.3 voxel in these tests.
# So each contour pixel must lie within this many voxels of the disc's radius.
CONTOUR_RING_TOLERANCE_VOXELS = 1.0

# Share of the 10-degree sectors around the disc centre that must contain contour pixels.
# The axis lines are drawn over the contour at four points, which may empty a few sectors.
MIN_CONTOUR_SECTOR_SHARE = 0.85


def disc_case(spacing_xy=(0.8, 0.8), radius_mm=8.0, size_xy=(64, 64), centre_xy=(32, 32), value=60.0):
    """Return (image, labels) with one disc of lesion 1 on slice 2 of a 5-slice image."""
    size = (size_xy[0], size_xy[1], 5)
    y, x = np.ogrid[: size_xy[1], : size_xy[0]]
    disc = ((x - centre_xy[0]) * spacing_xy[0]) ** 2 + ((y - centre_xy[1]) * spacing_xy[1]) ** 2 <= radius_mm**2
    labels = np.zeros(tuple(reversed(size)), dtype=np.int32)
    labels[2][disc] = 1
    values = np.where(labels > 0, value, 0.0).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((spacing_xy[0], spacing_xy[1], 3.0))
    return image, labels


def decode(png: bytes) -> np.ndarray:
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG"
    return np.array(picture.convert("RGB"))


def pixels_of(picture: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Return the (row, column) of every pixel with exactly ``colour``."""
    return np.argwhere(np.all(picture == colour, axis=-1))


def first_tile_image_area(picture: np.ndarray, title: bool = False) -> np.ndarray:
    top = GAP_PX + (TITLE_HEIGHT_PX if title else 0)
    return picture[top : top + TILE_IMAGE_PX, GAP_PX : GAP_PX + TILE_IMAGE_PX]


def expected_size(tile_count: int, title: bool) -> tuple[int, int]:
    columns = min(tile_count, GRID_COLUMNS)
    rows = -(-tile_count // columns)
    width = columns * TILE_IMAGE_PX + (columns + 1) * GAP_PX
    height = rows * TILE_HEIGHT_PX + (rows + 1) * GAP_PX + (TITLE_HEIGHT_PX if title else 0)
    return width, height


def test_png_decodes_with_one_tile_size():
    image, labels = disc_case()
    measurements = measure_lesions(image, labels)

    picture = decode(render_preview(image, labels, measurements))

    assert picture.shape[:2] == expected_size(1, title=False)[::-1]


@pytest.mark.parametrize("lesion_count, title", [(2, False), (4, True), (5, False), (9, True)])
def test_grid_size_for_lesion_count(lesion_count, title):
    image, labels = disc_case()
    (lesion,) = measure_lesions(image, labels)
    measurements = [lesion] * lesion_count

    picture = decode(render_preview(image, labels, measurements, title="case 1" if title else ""))

    assert picture.shape[:2] == expected_size(lesion_count, title)[::-1]


def test_contour_on_disc_boundary():
    radius_mm, spacing = 8.0, 0.8
    image, labels = disc_case(spacing_xy=(spacing, spacing), radius_mm=radius_mm)
    measurements = measure_lesions(image, labels)

    area = first_tile_image_area(decode(render_preview(image, labels, measurements)))

    contour = pixels_of(area, CONTOUR_RGB)
    assert len(contour) > 0
    # The crop is square and centred on the disc, so the disc centre is the tile centre.
    centre = np.array([TILE_IMAGE_PX / 2, TILE_IMAGE_PX / 2])
    crop_voxels = measurements[0].bbox_max_vox[0] - measurements[0].bbox_min_vox[0] + 2 * np.ceil(MARGIN_MM / spacing)
    pixels_per_mm = TILE_IMAGE_PX / (crop_voxels * spacing)
    radius_px = np.linalg.norm(contour + 0.5 - centre, axis=1)
    tolerance_px = CONTOUR_RING_TOLERANCE_VOXELS * spacing * pixels_per_mm
    assert radius_px.min() >= radius_mm * pixels_per_mm - tolerance_px
    assert radius_px.max() <= radius_mm * pixels_per_mm + tolerance_px

    angles = np.arctan2(contour[:, 0] + 0.5 - centre[0], contour[:, 1] + 0.5 - centre[1])
    sectors = np.unique(np.floor(np.degrees(angles) / 10).astype(int))
    assert len(sectors) >= MIN_CONTOUR_SECTOR_SHARE * 36


def test_contour_absent_inside_disc():
    image, labels = disc_case()
    measurements = measure_lesions(image, labels)

    area = first_tile_image_area(decode(render_preview(image, labels, measurements)))

    centre = TILE_IMAGE_PX // 2
    core = area[centre - 20 : centre + 20, centre - 20 : centre + 20]
    assert len(pixels_of(core, CONTOUR_RGB)) == 0


def test_contour_round_on_anisotropic_pixels():
    image, labels = disc_case(spacing_xy=(0.5, 1.0), radius_mm=10.0, size_xy=(100, 50), centre_xy=(50, 25))
    measurements = measure_lesions(image, labels)

    area = first_tile_image_area(decode(render_preview(image, labels, measurements)))

    contour = pixels_of(area, CONTOUR_RGB)
    height = contour[:, 0].max() - contour[:, 0].min()
    width = contour[:, 1].max() - contour[:, 1].min()
    assert width == pytest.approx(height, rel=0.1)


def test_axes_drawn_in_their_colours():
    image, labels = disc_case()
    measurements = measure_lesions(image, labels)

    picture = decode(render_preview(image, labels, measurements))

    assert len(pixels_of(picture, LONG_AXIS_RGB)) > 0
    assert len(pixels_of(picture, SHORT_AXIS_RGB)) > 0


@pytest.mark.parametrize("hu, grey", [(-1000.0, 0), (-160.0, 0), (40.0, 127), (240.0, 255), (3000.0, 255)])
def test_window_soft_tissue(hu, grey):
    image, labels = disc_case(value=hu)
    measurements = measure_lesions(image, labels)

    area = first_tile_image_area(decode(render_preview(image, labels, measurements)))

    # Off both axis lines, well inside the disc.
    centre = TILE_IMAGE_PX // 2
    pixel = area[centre + 20, centre + 20]
    assert pixel[0] == pixel[1] == pixel[2]
    assert abs(int(pixel[0]) - grey) <= 1


def test_empty_label_map_draws_only_not_found_tile():
    image, _ = disc_case()
    labels = np.zeros(tuple(reversed(image.GetSize())), dtype=np.int32)
    measurements = measure_lesions(image, labels, {1: "box x[20,44) y[20,44) z[1,4)"})

    picture = decode(render_preview(image, labels, measurements))

    assert picture.shape[:2] == expected_size(1, title=False)[::-1]
    assert np.all(picture[..., 0] == picture[..., 1])
    assert np.all(picture[..., 1] == picture[..., 2])
    text_pixels = first_tile_image_area(picture).max(axis=-1) > 100
    assert text_pixels.any()


def test_no_measurements_gives_one_tile():
    image, labels = disc_case()

    picture = decode(render_preview(image, np.zeros_like(labels), []))

    assert picture.shape[:2] == expected_size(1, title=False)[::-1]
    assert np.all(picture[..., 0] == picture[..., 2])


def test_caption_format():
    image, labels = disc_case()
    (lesion,) = measure_lesions(image, labels)

    caption = lesion_caption(lesion)

    assert caption == (
        f"lesion 1: LA {lesion.long_axis_mm:.1f} mm, SA {lesion.short_axis_mm:.1f} mm, V {lesion.volume_ml:.1f} ml"
    )


def test_caption_not_found():
    caption = lesion_caption(LesionMeasurement(lesion_id=4, prompt="point", voxel_count=0))

    assert caption == "lesion 4: not found"


def test_caption_shows_tracking_status():
    caption = lesion_caption(LesionMeasurement(lesion_id=4, prompt="point", voxel_count=0), "outside_field_of_view")

    assert caption == "lesion 4: outside field of view"


def test_lesion_at_image_edge():
    image, labels = disc_case(centre_xy=(2, 3))
    measurements = measure_lesions(image, labels)

    picture = decode(render_preview(image, labels, measurements))

    assert len(pixels_of(picture, CONTOUR_RGB)) > 0


def test_rejects_labels_of_other_shape():
    image, labels = disc_case()

    with pytest.raises(ValueError, match="shape"):
        render_preview(image, labels[:4], [])


def test_axes_follow_lesion_orientation():
    image, _ = disc_case()
    y, x = np.ogrid[:64, :64]
    labels = np.zeros((5, 64, 64), dtype=np.int32)
    labels[2][((x - 32) / 14.0) ** 2 + ((y - 32) / 6.0) ** 2 <= 1.0] = 1
    measurements = measure_lesions(image, labels)

    area = first_tile_image_area(decode(render_preview(image, labels, measurements)))

    long_axis = pixels_of(area, LONG_AXIS_RGB)
    short_axis = pixels_of(area, SHORT_AXIS_RGB)
    assert np.ptp(long_axis[:, 1]) > 5 * np.ptp(long_axis[:, 0])
    assert np.ptp(short_axis[:, 0]) > 5 * np.ptp(short_axis[:, 1])
