"""One log format for gateway and workers: timestamp, level, logger, key=value message."""

from __future__ import annotations

import logging
import os


def configure_logging() -> None:
    level = os.environ.get("TUMORTRACK_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s")
