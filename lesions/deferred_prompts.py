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

REQUEST_FILE = "prompts_request.json"
RESOLVED_FILE = "prompts.json"

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


def store_unresolved_prompts(raw: bytes, inputs: Path, field: str = "prompts") -> int:
    """Check ``raw`` as far as possible without the image, store it and return the lesion count."""
    prompts = parse_prompts(raw, _UNBOUNDED_GEOMETRY, field=field)
    (inputs / REQUEST_FILE).write_bytes(raw)
    return len(prompts)


def resolve_stored_prompts(inputs: Path, geometry: ImageGeometry, field: str = "prompts") -> None:
    """Resolve the stored request against the loaded image and write the resolved file.

    Does nothing when the resolved file exists: the gateway wrote it for an
    upload, or an earlier attempt of this job did.
    """
    resolved = inputs / RESOLVED_FILE
    if resolved.exists():
        return

    prompts: list[LesionPrompt] = parse_prompts((inputs / REQUEST_FILE).read_bytes(), geometry, field=field)
    staged = inputs / f"{RESOLVED_FILE}.partial"
    staged.write_text(json.dumps({"lesions": [prompt_to_dict(prompt) for prompt in prompts]}))
    staged.replace(resolved)
