"""Job counters and stage-duration histograms kept in Redis.

Workers and gateways are separate processes, possibly on separate machines,
so the numbers live in Redis and the gateway renders them for Prometheus.
"""

from __future__ import annotations

import redis

# Upper bounds in seconds, from a sub-second classical stage to an hour-long model job.
STAGE_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _jobs_key(prefix: str) -> str:
    return f"{prefix}:metrics:jobs"


def _stage_key(prefix: str, stage: str) -> str:
    return f"{prefix}:metrics:stage:{stage}"


def count_job_state(client: redis.Redis, prefix: str, state: str, engine: str) -> None:
    """Count one job entering ``state`` (queued, running, succeeded, failed, cancelled)."""
    try:
        client.hincrby(_jobs_key(prefix), f"{state}|{engine}", 1)
    except redis.RedisError:
        # A Redis error while counting is dropped so that it cannot fail a job.
        pass


def observe_stage(client: redis.Redis, prefix: str, stage: str, seconds: float) -> None:
    try:
        with client.pipeline(transaction=False) as pipe:
            key = _stage_key(prefix, stage)
            for bound in STAGE_BUCKETS_S:
                if seconds <= bound:
                    pipe.hincrby(key, f"le:{bound}", 1)
            pipe.hincrby(key, "le:+Inf", 1)
            pipe.hincrbyfloat(key, "sum", seconds)
            pipe.sadd(f"{prefix}:metrics:stages", stage)
            pipe.execute()
    except redis.RedisError:
        pass


def read_job_counts(client: redis.Redis, prefix: str) -> dict[tuple[str, str], int]:
    counts = {}
    for field, value in client.hgetall(_jobs_key(prefix)).items():
        state, _, engine = field.decode().partition("|")
        counts[(state, engine)] = int(value)
    return counts


def read_stage_histograms(client: redis.Redis, prefix: str) -> dict[str, dict[str, float]]:
    stages = sorted(member.decode() for member in client.smembers(f"{prefix}:metrics:stages"))
    return {stage: {field.decode(): float(value) for field, value in client.hgetall(_stage_key(prefix, stage)).items()} for stage in stages}
