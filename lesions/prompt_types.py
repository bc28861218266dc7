"""Resolved lesion prompts: what an engine receives after the gateway has
parsed and checked the client's JSON.

Every coordinate here is a voxel index in ITK order (x, y, z) of the image the
prompt belongs to. Indexes address voxel centres, so a point may be fractional.
Boxes are half-open: ``box_min`` is the first voxel inside, ``box_max`` the
first voxel past the end, so ``box_max - box_min`` is the box size in voxels.
Numpy arrays from ``SimpleITK.GetArrayFromImage`` are indexed [z, y, x]; use
``zyx_slices`` to cut such an array with a box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

PromptKind = Literal["box", "point", "mask"]


@dataclass(frozen=True)
class LesionPrompt:
    """One prompted lesion, in voxel indexes (x, y, z) of its image."""

    lesion_id: int
    kind: PromptKind
    box_min: tuple[int, int, int] | None = None
    box_max: tuple[int, int, int] | None = None
    point: tuple[float, float, float] | None = None
    # Boolean array [z, y, x] on the image grid; only for kind == "mask".
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    # How the client gave the prompt, for the lesion table ("box voxel", "point world", ...).
    source: str = ""

    def zyx_slices(self) -> tuple[slice, slice, slice]:
        """Return the box as numpy slices [z, y, x]."""
        if self.box_min is None or self.box_max is None:
            raise ValueError(f"lesion {self.lesion_id} has no box")
        (x0, y0, z0), (x1, y1, z1) = self.box_min, self.box_max
        return slice(z0, z1), slice(y0, y1), slice(x0, x1)

    def describe(self) -> str:
        """Return a short human-readable form for tables and logs."""
        if self.kind == "box":
            return f"box x[{self.box_min[0]},{self.box_max[0]}) y[{self.box_min[1]},{self.box_max[1]}) z[{self.box_min[2]},{self.box_max[2]})"
        if self.kind == "point":
            x, y, z = self.point
            return f"point ({x:.1f}, {y:.1f}, {z:.1f})"
        return "mask"


def prompt_to_dict(prompt: LesionPrompt) -> dict:
    """Serialise a box or point prompt for the job's input folder (mask prompts travel as files)."""
    data = {"id": prompt.lesion_id, "kind": prompt.kind, "source": prompt.source}
    if prompt.kind == "box":
        data["box_min"] = list(prompt.box_min)
        data["box_max"] = list(prompt.box_max)
    elif prompt.kind == "point":
        data["point"] = list(prompt.point)
    return data


def prompt_from_dict(data: dict, mask: np.ndarray | None = None) -> LesionPrompt:
    """Rebuild a prompt written by ``prompt_to_dict``."""
    return LesionPrompt(
        lesion_id=int(data["id"]),
        kind=data["kind"],
        box_min=tuple(data["box_min"]) if "box_min" in data else None,
        box_max=tuple(data["box_max"]) if "box_max" in data else None,
        point=tuple(data["point"]) if "point" in data else None,
        mask=mask,
        source=data.get("source", ""),
    )
