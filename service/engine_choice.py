"""Engine selection for new jobs, decided at the gateway from worker heartbeats."""

from __future__ import annotations

from lesions.errors import InputError
from lesions.worker_registry import live_workers, ready_engines
from service.dependencies import GatewayContext

KNOWN_ENGINES = ("classical", "lesionlocator")


def engine_reports(context: GatewayContext) -> dict[str, list[dict]]:
    return ready_engines(live_workers(context.redis, context.settings.key_prefix))


def default_engine(context: GatewayContext, reports: dict[str, list[dict]]) -> str:
    if context.settings.default_engine:
        return context.settings.default_engine
    if any(report["ready"] for report in reports.get("lesionlocator", [])):
        return "lesionlocator"
    return "classical"


def choose_engine(context: GatewayContext, requested: str | None) -> str:
    """Return the engine for a new job, or raise InputError naming the ``engine`` field."""
    reports = engine_reports(context)
    name = requested or default_engine(context, reports)

    if name not in KNOWN_ENGINES:
        raise InputError("engine", f"unknown engine {name!r}; choose one of {list(KNOWN_ENGINES)}", code="unknown_engine")

    # With no live worker at all, a classical job still waits in the queue,
    # because every worker has that engine. A model engine must be reported ready.
    if name != "classical" and not any(report["ready"] for report in reports.get(name, [])):
        details = sorted({report.get("detail", "") for report in reports.get(name, []) if report.get("detail")})
        reason = "; ".join(details) if details else "no live worker reports it"
        raise InputError("engine", f"engine {name!r} is not ready: {reason}. Use engine 'classical' or install the checkpoint.", code="engine_unavailable")

    return name
