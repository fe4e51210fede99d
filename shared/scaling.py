"""How many workers the queues ask for, and the numbers published for cloud autoscalers.

A worker consumes every job queue (one batch task), so the backlog is the sum of the queue depths
(waiting + reserved, from shared.queue_depth). Target tracking keeps backlog / workers near a target:

desired_replicas(depths, per_worker, min_replicas=0, max_replicas=100, activation=0) -> int
backlog_per_worker(depths, workers) -> float
cloudwatch_metric_data(depths, workers) -> list of CloudWatch MetricDatum dicts
publish_cloudwatch(client, depths, workers, namespace="biofleet") -> list of what was put
"""

import math
from collections.abc import Mapping
from datetime import UTC, datetime

NAMESPACE = "biofleet"
BACKLOG_PER_WORKER = "BacklogPerWorker"
QUEUE_DEPTH = "QueueDepth"
WORKERS = "Workers"


def backlog(depths: Mapping[str, int]) -> int:
    """Total messages waiting or reserved over all queues."""
    return sum(int(depth) for depth in depths.values())


def desired_replicas(
    depths: Mapping[str, int],
    per_worker: float,
    min_replicas: int = 0,
    max_replicas: int = 100,
    activation: int = 0,
) -> int:
    """The replica count a target-tracking policy asks for.

    depths: {queue: depth}; per_worker: target backlog per worker (> 0). A backlog at or under
    `activation` is idle: the fleet goes to min_replicas (0 allows scale to zero). Above it the
    answer is ceil(backlog / per_worker), at least 1, clamped to [min_replicas, max_replicas].
    """
    if per_worker <= 0:
        raise ValueError("per_worker must be > 0")
    if not 0 <= min_replicas <= max_replicas:
        raise ValueError("need 0 <= min_replicas <= max_replicas")
    total = backlog(depths)
    if total <= activation:
        return min_replicas
    wanted = max(1, math.ceil(total / per_worker))
    return min(max_replicas, max(min_replicas, wanted))


def backlog_per_worker(depths: Mapping[str, int], workers: int) -> float:
    """Backlog divided by the running workers; with none running, the whole backlog (as for one),
    so a target-tracking policy still sees the queue grow and scales out."""
    return backlog(depths) / max(1, workers)


def cloudwatch_metric_data(depths: Mapping[str, int], workers: int, timestamp: datetime | None = None) -> list[dict]:
    """MetricData for put_metric_data: BacklogPerWorker and Workers (no dimensions, the metric a
    target-tracking policy reads), and QueueDepth per queue (dimension Queue)."""
    when = timestamp or datetime.now(UTC)
    data = [
        {
            "MetricName": BACKLOG_PER_WORKER,
            "Value": backlog_per_worker(depths, workers),
            "Unit": "Count",
            "Timestamp": when,
        },
        {"MetricName": WORKERS, "Value": float(workers), "Unit": "Count", "Timestamp": when},
    ]
    for queue, depth in depths.items():
        data.append(
            {
                "MetricName": QUEUE_DEPTH,
                "Dimensions": [{"Name": "Queue", "Value": queue}],
                "Value": float(depth),
                "Unit": "Count",
                "Timestamp": when,
            }
        )
    return data


def publish_cloudwatch(client, depths: Mapping[str, int], workers: int, namespace: str = NAMESPACE) -> list[dict]:
    """Put the metrics of cloudwatch_metric_data with a boto3 CloudWatch client; return them."""
    data = cloudwatch_metric_data(depths, workers)
    for start in range(0, len(data), 1000):  # the API's limit per call
        client.put_metric_data(Namespace=namespace, MetricData=data[start : start + 1000])
    return data


def count_asg_in_service(autoscaling_client, group_name: str) -> int:
    """Instances InService in an EC2 Auto Scaling group (boto3 autoscaling client)."""
    response = autoscaling_client.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name])
    groups = response.get("AutoScalingGroups", [])
    if not groups:
        raise LookupError(f"no Auto Scaling group named {group_name!r}")
    return sum(1 for instance in groups[0].get("Instances", []) if instance.get("LifecycleState") == "InService")
