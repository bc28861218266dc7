"""Liveness, readiness and engine status."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from lesions.worker_registry import live_workers
from service.dependencies import Context
from service.engine_choice import KNOWN_ENGINES, default_engine, engine_reports
from service.schemas import EngineOut, EnginesOut, EngineWorkerOut, HealthOut, ReadyOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, operation_id="healthz")
def healthz() -> HealthOut:
    """Say that the gateway process is up."""
    return HealthOut(status="ok")


@router.get("/readyz", response_model=ReadyOut, operation_id="readyz", responses={503: {"model": ReadyOut}})
def readyz(context: Context):
    """Say whether jobs can run: Redis reachable and at least one worker alive."""
    try:
        context.redis.ping()
        workers = live_workers(context.redis, context.settings.key_prefix)
    except redis.RedisError as error:
        body = ReadyOut(status="unavailable", redis="unreachable", workers=0, detail=f"Redis is unreachable: {type(error).__name__}")
        return JSONResponse(status_code=503, content=body.model_dump(), headers={"Retry-After": "5"})

    if not workers:
        body = ReadyOut(status="unavailable", redis="ok", workers=0, detail="no worker has reported in the last heartbeat interval")
        return JSONResponse(status_code=503, content=body.model_dump(), headers={"Retry-After": "5"})
    return ReadyOut(status="ok", redis="ok", workers=len(workers))


@router.get("/v1/engines", response_model=EnginesOut, operation_id="list_engines", tags=["engines"])
def list_engines(context: Context) -> EnginesOut:
    """List the engines, whether a live worker has each one ready, on which device, with which folds."""
    reports = engine_reports(context)
    default = default_engine(context, reports)
    engines = []
    for name in KNOWN_ENGINES:
        workers = [
            EngineWorkerOut(
                worker=r["worker"],
                ready=r["ready"],
                device=r.get("device", "cpu"),
                detail=r.get("detail", ""),
                folds=list(r.get("folds", [])),
                checkpoint=r.get("checkpoint"),
                tracking=r.get("tracking", "classical"),
                tracking_detail=r.get("tracking_detail", ""),
            )
            for r in reports.get(name, [])
        ]
        model_tracking = any(w.ready and w.tracking == "model" for w in workers)
        engines.append(EngineOut(name=name, ready=any(w.ready for w in workers), default=name == default, model_tracking=model_tracking, workers=workers))
    return EnginesOut(engines=engines)
