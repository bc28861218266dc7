"""Build the FastAPI application of the gateway. The gateway never imports torch."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from lesions.logging_config import configure_logging
from lesions.settings import Settings, get_settings
from service.body_limit import BodySizeLimitMiddleware
from service.dependencies import build_context
from service.errors import install_error_handlers
from service.routers import health, jobs, metrics, segmentations, trackings

DESCRIPTION = """
Promptable 3D lesion segmentation on CT.

1. `POST /v1/segmentations` with the CT volume as `image` and the prompts as
   `prompts`, e.g. `{"frame": "voxel", "lesions": [{"id": 1, "box": {"min":
   {"x": 40, "y": 52, "z": 10}, "max": {"x": 90, "y": 101, "z": 30}}}]}`.
   Voxel indexes are in ITK order (x, y, z); boxes are half-open; `"world"`
   coordinates are LPS millimetres.
2. Poll `GET /v1/jobs/{id}` until `state` is `succeeded` or `failed`.
3. Download `mask.nii.gz` (label = lesion id, in the input's geometry),
   `lesions.json`, `lesions.csv` and `preview.png` from the job's artifacts.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    configure_logging()
    settings = settings or get_settings()

    if not settings.api_key_tenants():
        logging.getLogger("tumortrack.gateway").warning("no API keys configured (TUMORTRACK_API_KEYS): the service is open to every client on its network")

    # Swagger UI's scripts are served by the gateway itself, since hospital
    # networks often cannot reach the public CDN that FastAPI's default page uses.
    app = FastAPIOffline(title="TumorTrack", version="1.0.0", description=DESCRIPTION)
    app.state.context = build_context(settings)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)

    app.include_router(health.router)
    app.include_router(segmentations.router)
    app.include_router(trackings.router)
    app.include_router(jobs.router)
    app.include_router(metrics.router)
    return app
