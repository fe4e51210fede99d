"""`biofleet status --watch`: a live terminal view of a stack's metrics, refreshed each second.

Reads the same /metrics endpoints Prometheus scrapes (queue depth exporter, worker pool processes,
callback dispatcher, API), never the database.
sample(urls) -> Snapshot: one read of every endpoint (an endpoint that does not answer is listed
    in Snapshot.down). parse(texts, at) -> Snapshot from metrics texts (for recorded snapshots).
rates(before, after) -> View: depth, jobs/s by outcome, end-to-end latency p50/p95/p99 over the
    interval, workers and their utilisation, batch size, callbacks, API 4xx/5xx per second.
render(view) -> a rich renderable; watch(urls, interval_s, frames) runs the live view.
"""

import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.table import Table

ENDPOINT_TIMEOUT_S = 0.5


@dataclass
class Snapshot:
    at: float
    depth: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)  # status -> jobs made final
    latency_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    workers: dict[str, str] = field(default_factory=dict)  # endpoint -> "model_version on device"
    busy_s: float = 0.0
    batch_sum: float = 0.0
    batch_count: float = 0.0
    callbacks_pending: float | None = None
    callback_attempts: dict[str, float] = field(default_factory=dict)  # outcome -> attempts
    api_requests: dict[str, float] = field(default_factory=dict)  # 2xx, 4xx, 5xx -> requests
    down: list[str] = field(default_factory=list)


@dataclass
class View:
    depth: dict[str, float]
    jobs_per_s: dict[str, float]
    latency_s: dict[str, float | None]  # p50, p95, p99 over the interval (None without jobs)
    workers: dict[str, str]
    utilisation: float | None
    batch_size: float | None
    callbacks_pending: float | None
    callbacks_per_s: dict[str, float]
    api_per_s: dict[str, float]
    down: list[str]


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=ENDPOINT_TIMEOUT_S) as response:
            return response.read().decode()
    except OSError:
        return None


def parse(texts: dict[str, str | None], at: float) -> Snapshot:
    """A Snapshot from {endpoint url: metrics text, or None when it did not answer}."""
    snap = Snapshot(at=at, down=sorted(url for url, text in texts.items() if text is None))
    finished: dict[str, float] = defaultdict(float)
    buckets: dict[float, float] = defaultdict(float)
    attempts: dict[str, float] = defaultdict(float)
    api: dict[str, float] = defaultdict(float)
    for url, text in texts.items():
        for family in text_string_to_metric_families(text or ""):
            for s in family.samples:
                name, labels, value = s.name, s.labels, s.value
                if name == "biofleet_queue_depth":
                    snap.depth[labels["queue"]] = value
                elif name == "biofleet_jobs_finished_total":
                    finished[labels["status"]] += value
                elif name == "biofleet_job_latency_seconds_bucket":
                    buckets[float(labels["le"])] += value
                elif name == "biofleet_worker_info" and value == 1:
                    snap.workers[url] = f"{labels['model_version']} on {labels['device']}"
                elif name == "biofleet_worker_busy_seconds_total":
                    snap.busy_s += value
                elif name == "biofleet_batch_size_sum":
                    snap.batch_sum += value
                elif name == "biofleet_batch_size_count":
                    snap.batch_count += value
                elif name == "biofleet_callbacks_pending":
                    snap.callbacks_pending = (snap.callbacks_pending or 0.0) + value
                elif name == "biofleet_callback_attempts_total":
                    attempts[labels["outcome"]] += value
                elif name == "biofleet_api_requests_total":
                    api[labels["code"][0] + "xx"] += value
    snap.finished, snap.latency_buckets = dict(finished), dict(buckets)
    snap.callback_attempts, snap.api_requests = dict(attempts), dict(api)
    return snap


def sample(urls: list[str]) -> Snapshot:
    at = time.time()
    return parse({url: fetch(url) for url in urls}, at)


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets {le: count} (linear within a bucket)."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return ordered[-1][0]


def _per_s(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    return {key: max(0.0, value - before.get(key, 0.0)) / seconds for key, value in sorted(after.items())}


def rates(before: Snapshot, after: Snapshot) -> View:
    seconds = max(after.at - before.at, 1e-6)
    delta = {le: count - before.latency_buckets.get(le, 0.0) for le, count in after.latency_buckets.items()}
    batches = after.batch_count - before.batch_count
    workers = len(after.workers)
    return View(
        depth=after.depth,
        jobs_per_s=_per_s(before.finished, after.finished, seconds),
        latency_s={f"p{int(q * 100)}": quantile(q, delta) for q in (0.5, 0.95, 0.99)},
        workers=after.workers,
        utilisation=(after.busy_s - before.busy_s) / seconds / workers if workers else None,
        batch_size=(after.batch_sum - before.batch_sum) / batches if batches > 0 else None,
        callbacks_pending=after.callbacks_pending,
        callbacks_per_s=_per_s(before.callback_attempts, after.callback_attempts, seconds),
        api_per_s=_per_s(before.api_requests, after.api_requests, seconds),
        down=after.down,
    )


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def render(view: View) -> Group:
    queues = Table(title="queue depth (waiting + reserved)")
    queues.add_column("queue")
    queues.add_column("depth", justify="right")
    for queue, depth in view.depth.items():
        queues.add_row(queue, f"{depth:.0f}")
    queues.add_row("[bold]all[/]", f"[bold]{sum(view.depth.values()):.0f}[/]")
    flow = Table(title="throughput and latency", show_header=False)
    flow.add_column("what")
    flow.add_column("value", justify="right")
    for status, per_s in view.jobs_per_s.items():
        flow.add_row(f"jobs {status}/s", _fmt(per_s))
    for name, seconds in view.latency_s.items():
        flow.add_row(f"end-to-end {name}", _fmt(seconds, " s"))
    flow.add_row("batch size", _fmt(view.batch_size, digits=1))
    for code, per_s in view.api_per_s.items():
        flow.add_row(f"API {code}/s", _fmt(per_s))
    flow.add_row("callbacks pending", _fmt(view.callbacks_pending, digits=0))
    for outcome, per_s in view.callbacks_per_s.items():
        flow.add_row(f"callbacks {outcome}/s", _fmt(per_s))
    busy = None if view.utilisation is None else view.utilisation * 100
    fleet = Table(title=f"workers: {len(view.workers)}, utilisation {_fmt(busy, ' %', 0)}")
    fleet.add_column("metrics endpoint")
    fleet.add_column("model")
    for url, model in sorted(view.workers.items()):
        fleet.add_row(url, model)
    parts = [queues, flow, fleet]
    if view.down:
        parts.append(f"[yellow]not answering: {', '.join(view.down)}[/]")
    return Group(*parts)


def watch(urls: list[str], interval_s: float = 1.0, frames: int | None = None) -> None:
    """Refresh the view every interval_s until Ctrl-C (or `frames` refreshes)."""
    from rich.live import Live

    before = sample(urls)
    shown = 0
    with Live(render(rates(before, before)), refresh_per_second=4, screen=False) as live:
        try:
            while frames is None or shown < frames:
                time.sleep(interval_s)
                after = sample(urls)
                live.update(render(rates(before, after)))
                before, shown = after, shown + 1
        except KeyboardInterrupt:
            pass


def stack_metric_urls(stack: dict, worker_processes: int) -> list[str]:
    """The metrics endpoints of a stack.json: exporter, API, dispatcher, each worker pool process."""
    urls = [stack.get(name) for name in ("depth_url", "api_metrics_url", "callbacks_metrics_url")]
    worker = stack.get("metrics_url")
    if worker:
        base, port = worker.removesuffix("/metrics").rsplit(":", 1)
        urls += [f"{base}:{int(port) + index}/metrics" for index in range(worker_processes)]
    return [url for url in urls if url]
