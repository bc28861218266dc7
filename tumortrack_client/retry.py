"""When to retry a request and how long to wait before the next attempt.

The service requests a retry with 429 (queue full) and 503 (Redis or every
worker down), usually with a ``Retry-After`` header. Proxies in front of it
return 502 and 504 for the same kind of passing trouble. Connection errors and
timeouts are retried too: job submissions are safe to repeat because the
client always sends an ``Idempotency-Key``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Limits on retries of one request.

    A 429 means the service works but its queue is full, so it is retried
    until ``queue_full_max_wait_s`` seconds of waiting have passed. Other
    transient failures (503, 502, 504, connection errors and timeouts) are
    retried at most ``max_retries`` times.
    """

    max_retries: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 600.0
    queue_full_max_wait_s: float = 3600.0

    def backoff_s(self, failures: int) -> float:
        """Return the wait after the ``failures``-th failure in a row: exponential, capped, with jitter."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (failures - 1))
        # Jitter keeps the many requests of one batch from retrying in lockstep.
        return ceiling * random.uniform(0.5, 1.0)

    def delay_s(self, failures: int, retry_after: str | None) -> float:
        """Return the wait before the next attempt: the server's Retry-After when it sent one, else the backoff."""
        requested = parse_retry_after(retry_after)
        if requested is None:
            return self.backoff_s(failures)
        return min(requested, self.max_retry_after_s)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return the seconds a ``Retry-After`` header requests (delay-seconds or HTTP-date), or None when absent or invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)

    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - (now or datetime.now(timezone.utc))).total_seconds())
