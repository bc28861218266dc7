"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from lesions.metrics_store import STAGE_BUCKETS_S, read_job_counts, read_stage_histograms
from lesions.worker_registry import live_workers
from service.dependencies import Context, GatewayContext

router = APIRouter(tags=["health"])


class _RedisCollector:
    def __init__(self, context: GatewayContext):
        self.context = context

    def collect(self):
        client, prefix = self.context.redis, self.context.settings.key_prefix
        up = GaugeMetricFamily("tumortrack_redis_up", "1 when the gateway reached Redis for this scrape.")
        try:
            counts = read_job_counts(client, prefix)
            stages = read_stage_histograms(client, prefix)
            queue_depth = client.llen(self.context.settings.queue)
            workers = len(live_workers(client, prefix))
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        jobs = CounterMetricFamily("tumortrack_jobs", "Jobs that entered each state, by engine.", labels=["state", "engine"])
        for (state, engine), value in sorted(counts.items()):
            jobs.add_metric([state, engine], value)
        yield jobs

        durations = HistogramMetricFamily("tumortrack_stage_duration_seconds", "Duration of job stages on the workers.", labels=["stage"])
        for stage, fields in stages.items():
            buckets = [(str(bound), fields.get(f"le:{bound}", 0.0)) for bound in STAGE_BUCKETS_S] + [("+Inf", fields.get("le:+Inf", 0.0))]
            durations.add_metric([stage], buckets, fields.get("sum", 0.0))
        yield durations

        depth = GaugeMetricFamily("tumortrack_queue_depth", "Messages waiting in the Celery queue.")
        depth.add_metric([], queue_depth)
        yield depth

        alive = GaugeMetricFamily("tumortrack_workers", "Worker processes with a live heartbeat.")
        alive.add_metric([], workers)
        yield alive


@router.get("/metrics", operation_id="metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics."}})
def metrics(context: Context) -> Response:
    """Expose job, stage, queue and worker metrics for Prometheus."""
    registry = CollectorRegistry()
    registry.register(_RedisCollector(context))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
