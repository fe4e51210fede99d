"""`python -m shared.exporter`: queue depth for Prometheus and autoscalers (KEDA), on its own port.

Each scrape costs O(queues) Redis commands plus one scan of the reserved messages (bounded by
what the workers prefetch); it never touches Postgres.
DepthCollector(redis_client): biofleet_queue_depth{queue} (waiting + reserved, shared/queue_depth.py)
    and biofleet_exporter_redis_up (1 when Redis answered this scrape).
depth_registry(redis_client) -> a CollectorRegistry holding it.
main(): serve it on settings.metrics_host:settings.exporter_port until stopped.
"""

import logging
import signal
import threading

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.queue_depth import queue_depths
from shared.queues import JOB_QUEUES

log = logging.getLogger(__name__)
REDIS_TIMEOUT_S = 2.0


class DepthCollector(Collector):
    def __init__(self, redis_client):
        self.redis = redis_client

    def collect(self):
        up = GaugeMetricFamily("biofleet_exporter_redis_up", "1 when Redis answered this scrape.")
        try:
            depths = queue_depths(self.redis, JOB_QUEUES)
        except Exception as exc:
            log.warning("queue depth unavailable", extra={"error": type(exc).__name__})
            up.add_metric([], 0)
            yield up
            return
        gauge = GaugeMetricFamily("biofleet_queue_depth", "Messages waiting or reserved, per queue.", labels=["queue"])
        for queue, depth in depths.items():
            gauge.add_metric([queue], depth)
        up.add_metric([], 1)
        yield gauge
        yield up


def depth_registry(redis_client) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DepthCollector(redis_client))
    return registry


def main() -> None:
    import redis

    from shared.logs import configure_logging
    from shared.services import resolve
    from shared.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    url = settings.redis_url or resolve(settings).redis_url  # Redis only: no database URL needed
    client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S)
    start_http_server(settings.exporter_port, addr=settings.metrics_host, registry=depth_registry(client))
    log.info("queue depth served", extra={"port": settings.exporter_port})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    client.close()


if __name__ == "__main__":
    main()
