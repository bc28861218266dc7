"""Build the engines a worker process offers, once per process.

The classical engine is always there. The lesionlocator engine is built when
TUMORTRACK_CHECKPOINT_DIR is set. A missing or broken checkpoint leaves it
unavailable with a message naming the file, while the classical engine keeps
serving.
"""

from __future__ import annotations

import logging

from lesions.errors import EngineUnavailable
from lesions.settings import Settings
from worker.engines.base import Engine, EngineStatus
from worker.engines.classical import ClassicalEngine

logger = logging.getLogger(__name__)

ENGINE_NAMES = ("classical", "lesionlocator")


class EngineRegistry:
    def __init__(self, engines: dict[str, Engine], unavailable: dict[str, EngineStatus]):
        self.engines = engines
        self.unavailable = unavailable

    def get(self, name: str) -> Engine:
        if name in self.engines:
            return self.engines[name]
        reason = self.unavailable.get(name)
        detail = reason.detail if reason else "it is not configured on this worker"
        raise EngineUnavailable(f"engine '{name}' is not available: {detail}")

    def statuses(self) -> list[EngineStatus]:
        return [engine.status() for engine in self.engines.values()] + list(self.unavailable.values())


def build_engines(settings: Settings) -> EngineRegistry:
    engines: dict[str, Engine] = {"classical": ClassicalEngine()}
    unavailable: dict[str, EngineStatus] = {}

    if settings.checkpoint_dir is None:
        unavailable["lesionlocator"] = EngineStatus(name="lesionlocator", ready=False, detail="TUMORTRACK_CHECKPOINT_DIR is not set")
        return EngineRegistry(engines, unavailable)

    try:
        from worker.engines.lesionlocator.engine import LesionLocatorEngine

        engines["lesionlocator"] = LesionLocatorEngine(settings.checkpoint_dir, folds=settings.folds())
        logger.info("engine=lesionlocator ready checkpoint=%s", settings.checkpoint_dir)
    except EngineUnavailable as error:
        logger.error("engine=lesionlocator unavailable: %s", error)
        unavailable["lesionlocator"] = EngineStatus(name="lesionlocator", ready=False, detail=str(error), checkpoint=str(settings.checkpoint_dir))

    return EngineRegistry(engines, unavailable)
