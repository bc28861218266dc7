"""Parse the prompt JSON a client sends and resolve it against an image.

Three formats are accepted and converted here, once, to ``LesionPrompt``
(voxel indexes x, y, z of the image; boxes half-open):

- TumorTrack's own: ``{"frame": "voxel", "lesions": [{"id": 1, "box":
  {"min": {"x":..,"y":..,"z":..}, "max": {...}}}, {"id": 2, "point": {...},
  "frame": "world"}]}``. ``frame`` is "voxel" (ITK index order; boxes
  half-open, integer indexes) or "world" (LPS mm); a lesion's own frame
  overrides the top-level default.
- LesionLocator's: ``{"1": {"box": [z_min, z_max, y_min, y_max, x_min,
  x_max]}, "2": {"point": [z, y, x]}}`` in numpy order of the voxel array,
  boxes half-open, values numbers or numeric strings.
- grand-challenge "Multiple points" (``{"type": "Multiple points", "points":
  [{"name": "1", "point": [x, y, z]}]}``): world mm by grand-challenge's
  convention; a top-level ``"frame": "voxel"`` marks the points as voxel
  indexes instead, as the autoPET IV click files are. Points named
  "background" are clicks outside any lesion: no engine takes negative
  clicks, so they are left out rather than segmented as lesions.
- autoPET's click lists (``{"tumor": [[x, y, z], ...], "background": [...]}``):
  voxel indexes; each tumour click is one lesion, numbered from 1 in file
  order, and background clicks are left out as above.

A prompt outside the image is rejected with the prompt's path in the message,
never clipped.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lesions.errors import InputError
from lesions.geometry import ImageGeometry
from lesions.prompt_types import LesionPrompt

MAX_LESIONS = 256
MAX_LESION_ID = 65535  # label maps are written as uint16

Frame = Literal["voxel", "world"]

# grand-challenge point name of a click outside every lesion (autoPET IV task 1).
BACKGROUND_CLICK_NAME = "background"


class Coordinate(BaseModel):
    """A position: voxel index (x, y, z as ITK orders them) or LPS millimetres."""

    model_config = ConfigDict(extra="forbid")
    x: float
    y: float
    z: float

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.x, self.y, self.z)


class Box(BaseModel):
    """An axis-aligned box; in the voxel frame ``max`` is exclusive (half-open)."""

    model_config = ConfigDict(extra="forbid")
    min: Coordinate
    max: Coordinate


class LesionPromptIn(BaseModel):
    """One lesion to segment: exactly one of ``point`` or ``box``."""

    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=1, le=MAX_LESION_ID, description="Lesion id; becomes the label value in mask.nii.gz.")
    frame: Frame | None = Field(default=None, description="Overrides the top-level frame for this lesion.")
    point: Coordinate | None = None
    box: Box | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> "LesionPromptIn":
        if (self.point is None) == (self.box is None):
            raise ValueError("give exactly one of 'point' or 'box'")
        return self


class PromptsIn(BaseModel):
    """TumorTrack's prompt document."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "frame": "voxel",
                    "lesions": [
                        {"id": 1, "box": {"min": {"x": 40, "y": 52, "z": 10}, "max": {"x": 90, "y": 101, "z": 30}}},
                        {"id": 2, "point": {"x": -21.5, "y": 14.0, "z": 112.0}, "frame": "world"},
                    ],
                }
            ]
        },
    )
    frame: Frame | None = Field(default=None, description="Default frame of every lesion: 'voxel' (ITK index x, y, z) or 'world' (LPS mm).")
    lesions: list[LesionPromptIn] = Field(min_length=1, max_length=MAX_LESIONS)


def parse_prompts(raw: bytes | str, geometry: ImageGeometry, field: str = "prompts") -> list[LesionPrompt]:
    """Parse prompt JSON in any accepted format and resolve it against ``geometry``."""
    document = _load_json(raw, field)

    if isinstance(document, dict) and "lesions" in document:
        return _resolve_native(_validate_native(document, field), geometry, field)
    if isinstance(document, dict) and document.get("type") == "Multiple points" or (isinstance(document, dict) and "points" in document and "name" in document):
        return _resolve_grand_challenge(document, geometry, field)
    if isinstance(document, dict) and document and all(str(key).strip().isdigit() for key in document):
        return _resolve_lesionlocator(document, geometry, field)
    if isinstance(document, dict) and "tumor" in document and set(document) <= {"tumor", "background"}:
        return _resolve_autopet_clicks(document, geometry, field)

    raise InputError(field, "is not a recognised prompt document: expected {\"lesions\": [...]}, LesionLocator's {\"1\": {\"box\": [...]}}, a grand-challenge \"Multiple points\" object or autoPET's {\"tumor\": [[x, y, z], ...]}")


def _load_json(raw: bytes | str, field: str) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(field, f"is not valid JSON ({error})", code="invalid_json") from error


def _validate_native(document: dict, field: str) -> PromptsIn:
    try:
        return PromptsIn.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        location = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])
        raise InputError(f"{field}{location}", first["msg"]) from error


def _resolve_native(prompts: PromptsIn, geometry: ImageGeometry, field: str) -> list[LesionPrompt]:
    _check_unique_ids([lesion.id for lesion in prompts.lesions], field)
    resolved = []

    for position, lesion in enumerate(prompts.lesions):
        path = f"{field}.lesions[{position}]"
        frame = lesion.frame or prompts.frame
        if frame is None:
            raise InputError(f"{path}.frame", "is missing: set 'frame' to 'voxel' or 'world' on the lesion or at the top level")

        if lesion.point is not None:
            index = _point_index(lesion.point.as_tuple(), frame, geometry, f"{path}.point")
            resolved.append(LesionPrompt(lesion_id=lesion.id, kind="point", point=index, source=f"point {frame}"))
        else:
            box_min, box_max = _box_indexes(lesion.box.min.as_tuple(), lesion.box.max.as_tuple(), frame, geometry, f"{path}.box")
            resolved.append(LesionPrompt(lesion_id=lesion.id, kind="box", box_min=box_min, box_max=box_max, source=f"box {frame}"))

    return resolved


def _resolve_lesionlocator(document: dict, geometry: ImageGeometry, field: str) -> list[LesionPrompt]:
    resolved = []

    for key, entry in sorted(document.items(), key=lambda item: int(str(item[0]).strip())):
        path = f"{field}.{key}"
        lesion_id = int(str(key).strip())
        if not 1 <= lesion_id <= MAX_LESION_ID:
            raise InputError(path, f"lesion id {lesion_id} is outside 1..{MAX_LESION_ID}")
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in ("box", "point"):
            raise InputError(path, "must be an object with exactly one key, 'box' or 'point'")

        kind, values = next(iter(entry.items()))
        numbers = _numbers(values, 6 if kind == "box" else 3, f"{path}.{kind}")
        if kind == "box":
            z0, z1, y0, y1, x0, x1 = numbers
            box_min, box_max = _box_indexes((x0, y0, z0), (x1, y1, z1), "voxel", geometry, f"{path}.box")
            resolved.append(LesionPrompt(lesion_id=lesion_id, kind="box", box_min=box_min, box_max=box_max, source="box voxel (LesionLocator zyx)"))
        else:
            z, y, x = numbers
            index = _point_index((x, y, z), "voxel", geometry, f"{path}.point")
            resolved.append(LesionPrompt(lesion_id=lesion_id, kind="point", point=index, source="point voxel (LesionLocator zyx)"))

    if len(resolved) > MAX_LESIONS:
        raise InputError(field, f"has {len(resolved)} lesions; at most {MAX_LESIONS} are allowed per job")
    return resolved


def _resolve_grand_challenge(document: dict, geometry: ImageGeometry, field: str) -> list[LesionPrompt]:
    frame = document.get("frame", "world")
    if frame not in ("voxel", "world"):
        raise InputError(f"{field}.frame", f"must be 'voxel' or 'world', got {frame!r}")
    points = document.get("points")
    _check_click_list(points, f"{field}.points", "{\"name\", \"point\": [x, y, z]} objects", "points")

    resolved = []
    for position, entry in enumerate(points):
        path = f"{field}.points[{position}]"
        if not isinstance(entry, dict):
            raise InputError(path, "must be an object with 'point': [x, y, z]")
        index = _point_index(tuple(_numbers(entry.get("point"), 3, f"{path}.point")), frame, geometry, f"{path}.point")
        name = str(entry.get("name", ""))
        if name.strip().lower() == BACKGROUND_CLICK_NAME:
            continue
        # Lesions without a numeric name are numbered by their rank among the lesion clicks.
        lesion_id = int(name) if name.isdigit() and 1 <= int(name) <= MAX_LESION_ID else len(resolved) + 1
        resolved.append(LesionPrompt(lesion_id=lesion_id, kind="point", point=index, source=f"point {frame} (grand-challenge '{name[:40]}')"))

    if not resolved:
        raise InputError(f"{field}.points", "contains only background clicks; name at least one point after its lesion")
    _check_unique_ids([prompt.lesion_id for prompt in resolved], f"{field}.points")
    return resolved


def _resolve_autopet_clicks(document: dict, geometry: ImageGeometry, field: str) -> list[LesionPrompt]:
    clicks = document["tumor"]
    _check_click_list(clicks, f"{field}.tumor", "[x, y, z] voxel indexes", "clicks")

    resolved = []
    for position, click in enumerate(clicks):
        path = f"{field}.tumor[{position}]"
        index = _point_index(tuple(_numbers(click, 3, path)), "voxel", geometry, path)
        resolved.append(LesionPrompt(lesion_id=position + 1, kind="point", point=index, source="point voxel (autoPET tumour click)"))
    return resolved


def _check_click_list(values: Any, path: str, items: str, noun: str) -> None:
    """Raise InputError unless ``values`` is a non-empty list of at most MAX_LESIONS entries."""
    if not isinstance(values, list) or not values:
        raise InputError(path, f"must be a non-empty list of {items}")
    if len(values) > MAX_LESIONS:
        raise InputError(path, f"has {len(values)} {noun}; at most {MAX_LESIONS} are allowed per job")


def _numbers(values: Any, count: int, path: str) -> list[float]:
    if not isinstance(values, (list, tuple)) or len(values) != count:
        raise InputError(path, f"must be a list of {count} numbers")
    try:
        numbers = [float(value) for value in values]
    except (TypeError, ValueError) as error:
        raise InputError(path, f"must contain numbers or numeric strings, got {values!r}") from error
    if not all(math.isfinite(number) for number in numbers):
        raise InputError(path, "must contain finite numbers")
    return numbers


def _check_unique_ids(ids: list[int], field: str) -> None:
    duplicates = sorted({lesion_id for lesion_id in ids if ids.count(lesion_id) > 1})
    if duplicates:
        raise InputError(field, f"lesion ids must be unique; repeated: {duplicates}")


def _point_index(value: tuple[float, float, float], frame: str, geometry: ImageGeometry, path: str) -> tuple[float, float, float]:
    index = np.asarray(value, dtype=float) if frame == "voxel" else geometry.to_continuous_index(value)
    if not geometry.contains_index(index):
        size = list(geometry.size)
        raise InputError(path, f"lies outside the image: voxel index {np.round(index, 2).tolist()} (x, y, z) is not within an image of size {size}", code="prompt_outside_image")
    return tuple(float(v) for v in index)


def _box_indexes(low, high, frame: str, geometry: ImageGeometry, path: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    if any(a >= b for a, b in zip(low, high)):
        raise InputError(path, f"min {_format_point(low)} must be below max {_format_point(high)} on every axis (x, y, z)", code="invalid_box")

    if frame == "voxel":
        if any(float(v) != int(v) for v in (*low, *high)):
            raise InputError(path, "voxel boxes take integer indexes (min inclusive, max exclusive)")
        box_min = tuple(int(v) for v in low)
        box_max = tuple(int(v) for v in high)
    else:
        box_min, box_max = _world_box_to_voxels(low, high, geometry)

    size = geometry.size
    if any(lo < 0 for lo in box_min) or any(hi > limit for hi, limit in zip(box_max, size)) or any(lo >= hi for lo, hi in zip(box_min, box_max)):
        raise InputError(path, f"lies outside the image: voxel box {list(box_min)} to {list(box_max)} (x, y, z, half-open) is not within an image of size {list(size)}", code="prompt_outside_image")
    return box_min, box_max


def _format_point(values) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _world_box_to_voxels(low, high, geometry: ImageGeometry):
    # The box is axis-aligned in LPS; on an oblique image its voxel footprint is
    # the index-space bounding box of its eight corners. A voxel belongs to the
    # box when its centre lies inside that footprint.
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    indexes = np.array([geometry.to_continuous_index(corner) for corner in corners])
    box_min = tuple(int(math.ceil(v - 1e-6)) for v in indexes.min(axis=0))
    box_max = tuple(int(math.floor(v + 1e-6)) + 1 for v in indexes.max(axis=0))
    return box_min, box_max
