"""`make serve`: gateway on 127.0.0.1:8000 and one worker, in the foreground until Ctrl-C.

Uses the Redis at TUMORTRACK_REDIS_URL, or starts an embedded one when it is unset.
The embedded one keeps its data in var/redis, so jobs outlive a restart, as the
results in the store folder do.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ops.stack import REPO_ROOT, start_stack


def main() -> None:
    port = int(os.environ.get("TUMORTRACK_PORT", "8000"))
    concurrency = int(os.environ.get("TUMORTRACK_WORKER_CONCURRENCY", "1"))
    stack = start_stack(
        store_dir=Path(os.environ.get("TUMORTRACK_STORE_DIR", REPO_ROOT / "var" / "store")),
        log_dir=REPO_ROOT / "var" / "logs",
        redis_url=os.environ.get("TUMORTRACK_REDIS_URL"),
        gateway_port=port,
        worker_concurrency=concurrency,
        redis_data_dir=REPO_ROOT / "var" / "redis",
    )
    print(f"TumorTrack is ready at {stack.base_url} (Swagger UI: {stack.base_url}/docs); logs in {stack.log_dir}. Ctrl-C stops it.", flush=True)

    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            for name, process in list(stack.processes.items()):
                if process.poll() is not None:
                    print(f"{name} exited with code {process.returncode}; stopping. Last log lines:\n{stack.log_tail(name)}")
                    stopping = True
            time.sleep(1)
    finally:
        stack.stop()
        print("stopped")


if __name__ == "__main__":
    main()
