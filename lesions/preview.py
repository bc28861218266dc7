"""PNG contact sheet of measured lesions: one tile per lesion, tiles in a grid.

A tile shows the axial slice through the lesion's long axis (index z =
``long_axis_slice``), cropped to the lesion's bounding box plus ``MARGIN_MM`` on each
side and windowed for soft tissue (W400/L40 HU). The crop is scaled so that its longer
side in millimetres fills ``TILE_IMAGE_PX`` pixels and both screen axes have the same
millimetres per pixel, so pixels that are not square in the image keep their aspect.
Columns run along voxel index x and rows along index y, both increasing to the right
and downwards, so for an identity direction the view is radiological (patient's right
on the left, anterior at the top).

On the slice the lesion's contour is drawn in ``CONTOUR_RGB`` on its innermost
``CONTOUR_WIDTH_PX`` pixels, the long axis in ``LONG_AXIS_RGB`` and the short axis in
``SHORT_AXIS_RGB``. Below the slice a caption reads "lesion N: LA xx.x mm, SA yy.y mm,
V z.z ml". A lesion that was prompted but not found gets a tile saying so. Everything
else on the sheet, text included, is grey (red = green = blue).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from lesions.measurements import LesionMeasurement

WINDOW_WIDTH_HU = 400.0
WINDOW_LEVEL_HU = 40.0
MARGIN_MM = 10.0

TILE_IMAGE_PX = 320
CAPTION_HEIGHT_PX = 36
TITLE_HEIGHT_PX = 28
GAP_PX = 4
GRID_COLUMNS = 4
FONT_SIZE_PX = 12

CONTOUR_WIDTH_PX = 2
AXIS_LINE_WIDTH_PX = 2
CONTOUR_RGB = (255, 40, 40)
LONG_AXIS_RGB = (255, 220, 0)
SHORT_AXIS_RGB = (0, 200, 255)

_BACKGROUND_RGB = (40, 40, 40)
_EMPTY_IMAGE_RGB = (24, 24, 24)
_TEXT_RGB = (230, 230, 230)


def render_preview(
    image: sitk.Image,
    labels: np.ndarray,
    measurements: Sequence[LesionMeasurement],
    title: str = "",
    statuses: Mapping[int, str] | None = None,
) -> bytes:
    """Render one tile per measurement (a single "no lesions" tile when there are none)
    and return the sheet as PNG bytes.

    ``labels`` is the instance label map [z, y, x] that ``measurements`` came from.
    ``statuses`` gives a tracking status per lesion id, shown for a lesion without
    voxels in place of "not found".
    Raises ValueError when the image is not 3D or ``labels`` has another shape.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"image must be 3D, got {image.GetDimension()}D")
    expected_shape = tuple(reversed(image.GetSize()))
    if labels.shape != expected_shape:
        raise ValueError(f"labels shape {labels.shape} does not match the image's [z, y, x] shape {expected_shape}")

    font = ImageFont.load_default(size=FONT_SIZE_PX)
    if measurements:
        statuses = statuses or {}
        tiles = [_render_tile(image, labels, measurement, font, statuses.get(measurement.lesion_id)) for measurement in measurements]
    else:
        tiles = [_message_tile(["no lesions"], "no lesions", font)]
    sheet = _arrange_grid(tiles, title, font)

    output = io.BytesIO()
    sheet.save(output, format="PNG")
    return output.getvalue()


def lesion_caption(measurement: LesionMeasurement, status: str | None = None) -> str:
    """Return the caption under a lesion's tile; ``status`` replaces "not found" for a lesion without voxels."""
    if not measurement.found:
        return f"lesion {measurement.lesion_id}: {(status or 'not found').replace('_', ' ')}"
    return (
        f"lesion {measurement.lesion_id}: LA {measurement.long_axis_mm:.1f} mm, "
        f"SA {measurement.short_axis_mm:.1f} mm, V {measurement.volume_ml:.1f} ml"
    )


def _render_tile(
    image: sitk.Image, labels: np.ndarray, measurement: LesionMeasurement, font: ImageFont.ImageFont, status: str | None
) -> Image.Image:
    # NOTE: the slice is shown in index order and not reoriented, so a flipped or oblique
    # direction shows a mirrored or rotated view rather than the radiological one.
    caption = lesion_caption(measurement, status)
    if not measurement.found:
        lines = [caption, measurement.prompt] if measurement.prompt else [caption]
        return _message_tile(lines, caption, font)

    (x0, x1), (y0, y1) = _crop_ranges(image, measurement)
    z = measurement.long_axis_slice
    values = sitk.GetArrayFromImage(image[x0:x1, y0:y1, z]).astype(np.float64)
    lesion_mask = labels[z, y0:y1, x0:x1] == measurement.lesion_id

    picture, pixels_per_voxel = _render_slice(values, lesion_mask, _in_plane_spacing(image))
    _draw_axes(picture, measurement, (x0, y0), pixels_per_voxel)

    tile = _blank_tile()
    tile.paste(picture, ((TILE_IMAGE_PX - picture.width) // 2, (TILE_IMAGE_PX - picture.height) // 2))
    _draw_caption(tile, [caption, f"axial slice z = {z}"], font)
    return tile


def _in_plane_spacing(image: sitk.Image) -> tuple[float, float]:
    """Return the millimetres per voxel step along index x and index y."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    index_to_mm = direction @ np.diag(image.GetSpacing())
    return float(np.linalg.norm(index_to_mm[:, 0])), float(np.linalg.norm(index_to_mm[:, 1]))


def _crop_ranges(image: sitk.Image, measurement: LesionMeasurement) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return the half-open index ranges (x, y) of the lesion's box plus the margin, clipped to the image."""
    ranges = []
    for axis, spacing in enumerate(_in_plane_spacing(image)):
        margin = math.ceil(MARGIN_MM / spacing)
        low = max(measurement.bbox_min_vox[axis] - margin, 0)
        high = min(measurement.bbox_max_vox[axis] + margin, image.GetSize()[axis])
        ranges.append((low, high))
    return ranges[0], ranges[1]


def _render_slice(
    values: np.ndarray, lesion_mask: np.ndarray, spacing_xy: tuple[float, float]
) -> tuple[Image.Image, tuple[float, float]]:
    """Window, upsample and outline one slice crop [y, x].

    Returns the RGB picture and its size in pixels per voxel along x and y.
    """
    rows, columns = values.shape
    width_mm, height_mm = columns * spacing_xy[0], rows * spacing_xy[1]
    pixels_per_mm = TILE_IMAGE_PX / max(width_mm, height_mm)
    size = (max(round(width_mm * pixels_per_mm), 1), max(round(height_mm * pixels_per_mm), 1))

    low = WINDOW_LEVEL_HU - WINDOW_WIDTH_HU / 2
    grey = np.clip((values - low) / WINDOW_WIDTH_HU * 255.0, 0.0, 255.0).astype(np.uint8)
    picture = np.array(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR).convert("RGB"))

    mask_image = Image.fromarray(lesion_mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    mask = np.array(mask_image) > 0
    inner = ndimage.binary_erosion(mask, iterations=CONTOUR_WIDTH_PX, border_value=0)
    picture[mask & ~inner] = CONTOUR_RGB

    pixels_per_voxel = (size[0] / columns, size[1] / rows)
    return Image.fromarray(picture), pixels_per_voxel


def _draw_axes(
    picture: Image.Image,
    measurement: LesionMeasurement,
    crop_origin: tuple[int, int],
    pixels_per_voxel: tuple[float, float],
) -> None:
    draw = ImageDraw.Draw(picture)

    # Index i is the centre of the voxel that covers pixels [i, i + 1) * pixels_per_voxel.
    def to_pixel(point: tuple[float, float, float]) -> tuple[float, float]:
        return tuple((point[axis] - crop_origin[axis] + 0.5) * pixels_per_voxel[axis] for axis in (0, 1))

    for endpoints, colour in (
        (measurement.long_axis_endpoints_vox, LONG_AXIS_RGB),
        (measurement.short_axis_endpoints_vox, SHORT_AXIS_RGB),
    ):
        draw.line([to_pixel(endpoints[0]), to_pixel(endpoints[1])], fill=colour, width=AXIS_LINE_WIDTH_PX)


def _blank_tile() -> Image.Image:
    return Image.new("RGB", (TILE_IMAGE_PX, TILE_IMAGE_PX + CAPTION_HEIGHT_PX), (0, 0, 0))


def _message_tile(lines: list[str], caption: str, font: ImageFont.ImageFont) -> Image.Image:
    """Build a tile without a slice: ``lines`` centred in the image area, ``caption`` below."""
    tile = _blank_tile()
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, TILE_IMAGE_PX - 1, TILE_IMAGE_PX - 1), fill=_EMPTY_IMAGE_RGB)

    line_height = FONT_SIZE_PX + 4
    top = (TILE_IMAGE_PX - line_height * len(lines)) // 2
    for number, line in enumerate(lines):
        text = _fit_text(draw, line, font, TILE_IMAGE_PX - 8)
        left = (TILE_IMAGE_PX - draw.textlength(text, font=font)) / 2
        draw.text((left, top + number * line_height), text, fill=_TEXT_RGB, font=font)

    _draw_caption(tile, [caption], font)
    return tile


def _draw_caption(tile: Image.Image, lines: list[str], font: ImageFont.ImageFont) -> None:
    draw = ImageDraw.Draw(tile)
    for number, line in enumerate(lines):
        text = _fit_text(draw, line, font, TILE_IMAGE_PX - 8)
        draw.text((4, TILE_IMAGE_PX + 3 + number * (FONT_SIZE_PX + 4)), text, fill=_TEXT_RGB, font=font)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width_px: int) -> str:
    """Shorten ``text`` with a trailing "..." until it fits ``width_px``."""
    if draw.textlength(text, font=font) <= width_px:
        return text
    while text and draw.textlength(text + "...", font=font) > width_px:
        text = text[:-1]
    return text + "..."


def _arrange_grid(tiles: list[Image.Image], title: str, font: ImageFont.ImageFont) -> Image.Image:
    """Place tiles row by row, ``GRID_COLUMNS`` per row, under an optional title band."""
    columns = min(len(tiles), GRID_COLUMNS)
    rows = math.ceil(len(tiles) / columns)
    tile_width, tile_height = tiles[0].size
    title_height = TITLE_HEIGHT_PX if title else 0
    width = columns * tile_width + (columns + 1) * GAP_PX
    height = title_height + rows * tile_height + (rows + 1) * GAP_PX

    sheet = Image.new("RGB", (width, height), _BACKGROUND_RGB)
    if title:
        draw = ImageDraw.Draw(sheet)
        text = _fit_text(draw, title, font, width - 2 * GAP_PX)
        draw.text((GAP_PX, (TITLE_HEIGHT_PX - FONT_SIZE_PX) // 2), text, fill=_TEXT_RGB, font=font)

    for number, tile in enumerate(tiles):
        row, column = divmod(number, columns)
        left = GAP_PX + column * (tile_width + GAP_PX)
        top = title_height + GAP_PX + row * (tile_height + GAP_PX)
        sheet.paste(tile, (left, top))
    return sheet
