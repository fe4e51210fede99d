"""`biofleet autoscale desired | publish | simulate`: the numbers that size the worker fleet.

desired: the replica count target tracking asks for now, from the live queue depths.
publish --cloudwatch: BacklogPerWorker, Workers and QueueDepth per queue into CloudWatch, on an
interval (a sidecar or a periodic task next to the fleet).
simulate --trace FILE.csv: replay an arrival trace through the policy and worker models of
bench.scaling_sim; prints a table per target, writes a PNG (and JSON with --out).
"""

import json
import logging
import time
from pathlib import Path

import click

log = logging.getLogger("biofleet.autoscale")


def _redis_url(settings) -> str:
    from shared.services import read_stack_file

    url = settings.redis_url or read_stack_file(settings.state_dir).get("redis_url")
    if not url:
        raise click.ClickException("no broker: set BIOFLEET_REDIS_URL or run `biofleet up`")
    return url


def _depths(redis_url: str) -> dict[str, int]:
    import redis

    from shared.queue_depth import queue_depths

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return queue_depths(client)
    finally:
        client.close()


@click.group()
def autoscale() -> None:
    """Queue depth -> fleet size: desired replicas, CloudWatch metrics, a scaling simulator."""


@autoscale.command()
@click.option("--per-worker", type=float, required=True, help="Target backlog (waiting + reserved) per worker.")
@click.option("--min-replicas", type=int, default=0, show_default=True)
@click.option("--max-replicas", type=int, default=100, show_default=True)
@click.option("--activation", type=int, default=0, show_default=True, help="Backlog at or under this is idle.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def desired(per_worker: float, min_replicas: int, max_replicas: int, activation: int, as_json: bool) -> None:
    """The worker count a target-tracking policy asks for now: ceil(backlog / per-worker)."""
    import redis

    from shared.scaling import backlog, desired_replicas
    from shared.settings import get_settings

    try:
        depths = _depths(_redis_url(get_settings()))
    except redis.RedisError as exc:
        raise click.ClickException(f"broker not reachable: {exc}") from None
    try:
        count = desired_replicas(depths, per_worker, min_replicas, max_replicas, activation)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"queues": depths, "backlog": backlog(depths), "desired": count}, sort_keys=True))
        return
    for queue, depth in depths.items():
        click.echo(f"{queue:>10} {depth}")
    click.echo(f"{'backlog':>10} {backlog(depths)}")
    click.echo(f"{'desired':>10} {count}")


def _worker_count(redis_url: str, asg: str | None, autoscaling) -> int:
    from shared.scaling import count_asg_in_service
    from shared.stack import ping_workers

    if asg:
        return count_asg_in_service(autoscaling, asg)
    return len(ping_workers(redis_url, timeout=2.0))


@autoscale.command()
@click.option("--cloudwatch", is_flag=True, help="Publish to Amazon CloudWatch (the one sink so far).")
@click.option("--interval", type=float, default=60.0, show_default=True, help="Seconds between publications.")
@click.option("--once", is_flag=True, help="Publish once and exit.")
@click.option("--namespace", default="biofleet", show_default=True)
@click.option("--asg", default=None, help="Count workers as the InService instances of this Auto Scaling group "
              "(default: Celery workers that answer a ping).")  # fmt: skip
@click.option("--region", default=None, help="AWS region (default: boto3's own lookup).")
def publish(cloudwatch: bool, interval: float, once: bool, namespace: str, asg: str | None, region: str | None) -> None:
    """Put BacklogPerWorker, Workers and QueueDepth{Queue} into CloudWatch every --interval seconds."""
    import boto3
    import botocore.exceptions
    import redis

    from shared.logs import configure_logging
    from shared.scaling import backlog, publish_cloudwatch
    from shared.settings import get_settings

    if not cloudwatch:
        raise click.UsageError("choose where to publish: --cloudwatch")
    if interval <= 0:
        raise click.BadParameter("--interval must be > 0")
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    redis_url = _redis_url(settings)
    session = boto3.session.Session(region_name=region)
    client = session.client("cloudwatch")
    autoscaling = session.client("autoscaling") if asg else None
    failures = (redis.RedisError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, LookupError)
    while True:
        started = time.monotonic()
        try:
            depths = _depths(redis_url)
            workers = _worker_count(redis_url, asg, autoscaling)
            data = publish_cloudwatch(client, depths, workers, namespace=namespace)
            log.info(
                "published",
                extra={"namespace": namespace, "queues": depths, "backlog": backlog(depths), "workers": workers,
                       "backlog_per_worker": data[0]["Value"]},
            )  # fmt: skip
        except failures as exc:
            if once:
                raise click.ClickException(f"publish failed: {exc}") from None
            log.warning("publish failed, will retry", extra={"error": f"{type(exc).__name__}: {exc}"})
        if once:
            return
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


@autoscale.command()
@click.option("--trace", "trace_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="CSV: time_s, then jobs/s per queue (infra/traces/).")  # fmt: skip
@click.option("--per-worker", type=float, multiple=True, help="Target backlog per worker; repeat to compare "
              "(default: 8, and 2 and 32 to compare).")  # fmt: skip
@click.option("--min-replicas", type=int, default=None, help="Floor (default 2).")
@click.option("--max-replicas", type=int, default=None, help="Ceiling (default 8).")
@click.option("--activation", type=int, default=None, help="Backlog at or under this is idle (default 0).")
@click.option("--cooldown", type=float, default=None, help="Scale-down stabilisation window, s (default 300).")
@click.option("--poll", type=float, default=None, help="Seconds between metric reads (default 15).")
@click.option(
    "--startup", type=float, default=None, help="Seconds from asking for a worker to its first batch (default 180)."
)
@click.option("--scale-up-pods", type=int, default=None, help="Per minute at most max(this, 100%%) more (default 4).")
@click.option("--scale-down-pods", type=int, default=None, help="Per minute at most this many fewer (default 2).")
@click.option("--metric", type=click.Choice(["depth", "waiting"]), default=None,
              help="depth = waiting + reserved (biofleet's metric); waiting = Redis list length only (default depth).")  # fmt: skip
@click.option("--batch-size", type=int, default=None, help="Default: settings (BIOFLEET_BATCH_SIZE).")
@click.option("--flush-interval-ms", type=float, default=None, help="Default: settings (BIOFLEET_FLUSH_INTERVAL_MS).")
@click.option("--model-results", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="bench.model results for service times (default bench/results/model.json).")  # fmt: skip
@click.option("--price-per-hour", type=float, default=None, help="Price of one worker-hour (default 1.006, g5.xlarge).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG to write (default bench/results/scaling_<trace>.png).")  # fmt: skip
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the results as JSON here."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def simulate(trace_path: Path, per_worker: tuple[float, ...], plot_path: Path | None, out: Path | None, as_json: bool,
             model_results: Path | None, price_per_hour: float | None, seed: int, **overrides) -> None:  # fmt: skip
    """Replay an arrival trace through the scaling policy and the batching worker model."""
    from dataclasses import replace

    from bench import scaling_sim as sim
    from shared.settings import get_settings

    settings = get_settings()
    trace = sim.read_trace(trace_path)
    worker = sim.WorkerModel.from_results(
        model_results or sim.MODEL_RESULTS,
        batch_size=overrides.pop("batch_size") or settings.batch_size,
        flush_interval_s=(overrides.pop("flush_interval_ms") or settings.flush_interval_ms) / 1000.0,
        prefetch_batches=settings.prefetch_batches,
    )
    names = {"cooldown": "cooldown_s", "poll": "poll_s", "startup": "startup_s"}
    params = {names.get(k, k): v for k, v in overrides.items() if v is not None}
    base = replace(sim.Policy(), **params)
    price = sim.DEFAULT_PRICE_PER_HOUR if price_per_hour is None else price_per_hour
    targets = per_worker or (base.per_worker, 2.0, 32.0)
    results = []
    for target in targets:
        try:
            policy = replace(base, per_worker=target)
            results.append(sim.simulate(trace, policy, worker, price_per_hour=price, seed=seed))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    plot_path = plot_path or sim.MODEL_RESULTS.with_name(f"scaling_{trace.name}.png")
    sim.plot(trace, results, plot_path)
    report = {
        "trace": str(trace_path),
        "jobs": results[0].jobs,
        "duration_s": trace.duration,
        "worker": {"batch_size": worker.batch_size, "flush_interval_s": worker.flush_interval_s,
                   "batch_s": worker.batch_s(worker.batch_size), "jobs_per_s": worker.jobs_per_s,
                   "service_times_from": worker.source},
        "price_per_hour": price,
        "seed": seed,
        "results": [r.summary() for r in results],
        "plot": str(plot_path),
    }  # fmt: skip
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        return
    _print_table(trace, worker, base, results, price, plot_path)


def _short(path: str) -> str:
    """path relative to the current folder when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _print_table(trace, worker, base, results, price, plot_path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    table = Table(title=f"{trace.name}: {results[0].jobs:,} jobs over {trace.duration / 60:.0f} min")
    for name in ("target/worker", "wait p50 s", "p95 s", "p99 s", "worker-min", "cost $", "peak", "max depth"):
        table.add_column(name, justify="right")
    for r in results:
        table.add_row(
            f"{r.policy.per_worker:g}", f"{r.wait_p50_s:.2f}", f"{r.wait_p95_s:.1f}", f"{r.wait_p99_s:.1f}",
            f"{r.worker_minutes:.0f}", f"{r.cost:.2f}", str(r.peak_workers), f"{r.max_depth:,}",
        )  # fmt: skip
    console.print(table)
    worker_line = (
        f"worker: batch {worker.batch_size}, flush {worker.flush_interval_s * 1000:g} ms, "
        f"{worker.batch_s(worker.batch_size):.3f} s per full batch = {worker.jobs_per_s:.1f} jobs/s "
        f"(service times: {_short(worker.source)})"
    )
    policy_line = (
        f"policy: replicas {base.min_replicas}..{base.max_replicas}, metric {base.metric}, "
        f"activation {base.activation}, poll {base.poll_s:g} s, cooldown {base.cooldown_s:g} s, "
        f"start-up {base.startup_s:g} s, up max({base.scale_up_pods} pods, {base.scale_up_percent:g}%)/min, "
        f"down {base.scale_down_pods} pods/min; ${price:g} per worker-hour"
    )
    for line in (worker_line, policy_line, f"plot: {plot_path}"):
        console.print(line, soft_wrap=True, highlight=False)


COMMANDS = [autoscale]
