"""Prompts of a job whose image the gateway has not seen (an image by reference).

For an upload, the gateway resolves the prompts against the image's geometry
before it queues the job. For an image on a DICOMweb server, only the worker
retrieves the image. The gateway therefore checks everything that does not
depend on the image (JSON, format, ids, box order, integer voxel boxes,
negative voxel indexes) and stores the request as it came. The worker
resolves it after loading the image, so a prompt outside the image fails the
job with the same code and field a 422 would carry.
"""

from __future__ import annotations

import json
from pathlib import Path

from lesions.geometry import ImageGeometry
from lesions.prompt_types import LesionPrompt, prompt_to_dict
from lesions.prompts import parse_prompts

REQUEST_SUFFIX = "_request.json"

# A grid of 1 micrometre voxels from -1000 km to +1000 km on each axis. It
# contains every world point of a real scan, and its voxels are small enough
# that a world box never collapses to zero voxels, so resolving against it
# runs every check but "inside the image".
_UNBOUNDED_GEOMETRY = ImageGeometry(
    size=(2 * 10**12,) * 3,
    spacing=(1e-3, 1e-3, 1e-3),
    origin=(-1e9, -1e9, -1e9),
    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
)


def request_path(resolved: Path) -> Path:
    """Return where the unresolved request for ``resolved`` is stored: ``prompts.json`` -> ``prompts_request.json``."""
    return resolved.with_name(resolved.name.removesuffix(".json") + REQUEST_SUFFIX)


def store_unresolved_prompts(raw: bytes, resolved: Path, field: str = "prompts") -> int:
    """Check ``raw`` as far as possible without the image, store it beside ``resolved`` and return the lesion count."""
    prompts = parse_prompts(raw, _UNBOUNDED_GEOMETRY, field=field)
    request_path(resolved).write_bytes(raw)
    return len(prompts)


def resolve_stored_prompts(resolved: Path, geometry: ImageGeometry, field: str = "prompts") -> None:
    """Resolve the stored request against the loaded image and write ``resolved``.

    Does nothing when ``resolved`` exists: the gateway wrote it for an upload,
    or an earlier attempt of this job did.
    """
    if resolved.exists():
        return

    prompts: list[LesionPrompt] = parse_prompts(request_path(resolved).read_bytes(), geometry, field=field)
    staged = resolved.with_name(f"{resolved.name}.partial")
    staged.write_text(json.dumps({"lesions": [prompt_to_dict(prompt) for prompt in prompts]}))
    staged.replace(resolved)
