"""GET /metrics: the farm's state as Prometheus metrics, read from the database of record.

Read at scrape time from the tables, so every API replica reports the same
numbers and nothing is lost when one restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.jobs.dispatch import broker_keys, node_queue
from qrfarm.models import (
    Attempt,
    Job,
    NodeRecord,
    OrphanInstance,
    Prefetch,
    ReceivedInstance,
    WebhookDelivery,
)

from .deps import Context
from .scopes import needs
from .tokens import Scope

router = APIRouter(tags=["metrics"])
log = logging.getLogger(__name__)


class FarmCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session], redis_url: str | None) -> None:
        self.sessions = sessions
        self.redis_url = redis_url

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as db:
            nodes = list(db.scalars(select(NodeRecord.name).order_by(NodeRecord.name)))
            jobs = GaugeMetricFamily(
                "qrfarm_jobs", "Jobs by kind and state.", labels=["kind", "state"]
            )
            for kind, state, count in db.execute(
                select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
            ):
                jobs.add_metric([kind.value, state.value], count)
            yield jobs
            attempts = CounterMetricFamily(
                "qrfarm_job_attempts", "Attempts at jobs, by outcome.", labels=["outcome"]
            )
            for outcome, count in db.execute(
                select(Attempt.outcome, func.count()).group_by(Attempt.outcome)
            ):
                attempts.add_metric([outcome or "running"], count)
            yield attempts
            count, size = db.execute(
                select(func.count(), func.coalesce(func.sum(ReceivedInstance.size), 0))
            ).one()
            yield CounterMetricFamily(
                "qrfarm_received_instances", "Instances recorded against jobs.", value=count
            )
            yield CounterMetricFamily(
                "qrfarm_received_bytes", "Bytes of the instances recorded.", value=int(size)
            )
            yield CounterMetricFamily(
                "qrfarm_orphan_instances",
                "Instances stored that matched no job.",
                value=db.scalar(select(func.count()).select_from(OrphanInstance)) or 0,
            )
            webhooks = GaugeMetricFamily(
                "qrfarm_webhook_deliveries", "Webhook deliveries by state.", labels=["state"]
            )
            for delivery_state, count in db.execute(
                select(WebhookDelivery.state, func.count()).group_by(WebhookDelivery.state)
            ):
                webhooks.add_metric([delivery_state.value], count)
            yield webhooks
            prefetches = GaugeMetricFamily(
                "qrfarm_prefetches", "Prefetches by state.", labels=["state"]
            )
            for prefetch_state, count in db.execute(
                select(Prefetch.state, func.count()).group_by(Prefetch.state)
            ):
                prefetches.add_metric([prefetch_state.value], count)
            yield prefetches
        if self.redis_url:
            try:
                yield self._queue_depth(nodes)
            except redis.RedisError as exc:
                # The rest of the scrape is still true; the broker's health says why.
                log.warning("queue depth not read: %s", exc)

    def _queue_depth(self, nodes: list[str]) -> Metric:
        """Messages waiting in each node's queue (a Redis list per queue)."""
        depth = GaugeMetricFamily(
            "qrfarm_queue_depth", "Messages waiting in each node's queue.", labels=["queue"]
        )
        client = redis.Redis.from_url(self.redis_url or "", socket_timeout=2)
        try:
            for name in nodes:
                queue = node_queue(name)
                # Every priority lane of the queue is a list of its own.
                lanes = [int(client.llen(key)) for key in broker_keys(queue)]
                depth.add_metric([queue], sum(lanes))
        finally:
            client.close()
        return depth


def registry_for(sessions: sessionmaker[Session], redis_url: str | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(sessions, redis_url))
    return registry


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
    **needs(Scope.READ),
)
def metrics(ctx: Context) -> Response:
    registry: CollectorRegistry = ctx.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
