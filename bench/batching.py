"""Batching benchmark: one verification workload through the real stack, the worker flushing at
1 job (one job per forward pass, what a plain Celery task does), 8, 32 and 64.

Run: python -m bench.batching [--jobs 500] [--sizes 1,8,32,64] [--out bench/results/batching.json]

A private stack (Valkey, Postgres, file blobs, the API, one worker) in a temporary folder. The 10
lfw_colour identities are enrolled with 3 images each; then, for each flush size, a fresh worker
(BIOFLEET_BATCH_SIZE=size) gets a few warm-up jobs, and the same `--jobs` verifications (genuine
and impostor claims in turn) are posted as fast as the API takes them (`--concurrency` in flight).
jobs/s = jobs / (last finished_at - first submitted_at); latency = finished_at - submitted_at per
job (both Postgres timestamps); the worker's own time per job by stage comes from its metrics.
Prints tables and writes JSON.
"""

import argparse
import re
import time
import urllib.request
from pathlib import Path

from bench.harness import BenchStack, enroll_all, load_faces, submit_all, verify_bodies, wait_jobs
from bench.stats import RESULTS_DIR, summarize, write_results
from shared.stack import free_port

SIZES = (1, 8, 32, 64)
WARMUP_JOBS = 8
RESULTS = RESULTS_DIR / "batching.json"


STAGE_SUM = re.compile(r'^biofleet_batch_stage_seconds_sum\{stage="(\w+)"\} (\S+)$')


def stage_seconds(port: int) -> dict[str, float]:
    """Seconds each batch stage has taken so far in the worker whose metrics are on port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {m[1]: float(m[2]) for m in map(STAGE_SUM.match, text.splitlines()) if m}


def measure(stack: BenchStack, bodies: list[dict], concurrency: int, timeout: float) -> dict:
    """Submit bodies as verifications, wait for them; throughput, latency and correctness."""
    sent = submit_all(stack.api_url, stack.key, "verify", bodies, concurrency)
    submitted_s = max(s.answered for s in sent) - min(s.sent for s in sent)
    accepted = [s for s in sent if s.job_id]
    jobs = wait_jobs(stack, [s.job_id for s in accepted], timeout)
    done = [jobs[s.job_id] for s in accepted if s.job_id in jobs and jobs[s.job_id].finished is not None]
    latencies = [job.finished - job.submitted for job in done]
    latencies += [float("inf")] * (len(bodies) - len(done))  # refused or unfinished jobs
    span = (max(j.finished for j in done) - min(j.submitted for j in done)) if done else float("nan")
    correct = 0
    for index, s in enumerate(sent):
        job = jobs.get(s.job_id) if s.job_id else None
        if job is not None and job.status == "succeeded":
            correct += job.result["match"] == (index % 2 == 0)  # verify_bodies: even = genuine claim
    batches = {job.batch_id for job in done if job.batch_id}
    return {
        "jobs": len(bodies),
        "finished": len(done),
        "succeeded": sum(job.status == "succeeded" for job in done),
        "jobs_per_s": len(done) / span if done and span > 0 else 0.0,
        "latency_s": summarize(latencies),
        "submit_s": submitted_s,
        "mean_jobs_per_batch": len(done) / len(batches) if batches else None,
        "correct_decisions": correct,
    }


def run(jobs: int, sizes: list[int], flush_ms: int, concurrency: int, timeout: float, faces_dir: Path) -> dict:
    """Everything: enroll, then one fresh worker per flush size. Returns the results dict."""
    from rich.console import Console

    from bench.model import machine
    from worker.face.embed import resolve_device

    say = Console(stderr=True).log
    faces = load_faces(faces_dir)
    bodies = verify_bodies(faces, jobs)
    results: dict = {"per_size": {}}
    with BenchStack() as stack:
        stack.start_api()
        worker = stack.start_worker(batch_size=32, flush_interval_ms=flush_ms)
        enrolled = enroll_all(stack, faces)
        stack.stop_worker(worker)
        say(f"{enrolled} identities enrolled; {jobs} verifications per flush size")
        for size in sizes:
            port = free_port()
            worker = stack.start_worker(batch_size=size, flush_interval_ms=flush_ms, worker_metrics_port=port)
            measure(stack, verify_bodies(faces, WARMUP_JOBS), concurrency, timeout)
            before = stage_seconds(port)
            started = time.monotonic()
            figures = measure(stack, bodies, concurrency, timeout)
            after = stage_seconds(port)
            stack.stop_worker(worker)
            figures["worker_ms_per_job"] = {
                stage: 1000 * (after[stage] - before.get(stage, 0.0)) / max(1, figures["finished"]) for stage in after
            }
            results["per_size"][str(size)] = figures
            say(f"flush at {size}: {figures['jobs_per_s']:.1f} jobs/s ({time.monotonic() - started:.0f} s)")
    per_size = results["per_size"]
    base = per_size.get("1", {}).get("jobs_per_s")
    results.update(
        jobs_per_s={size: figures["jobs_per_s"] for size, figures in per_size.items()},
        speedup_over_1={size: figures["jobs_per_s"] / base for size, figures in per_size.items()} if base else {},
        workload={
            "jobs": jobs,
            "kind": "verify",
            "identities": len(faces),
            "concurrency": concurrency,
            "flush_interval_ms": flush_ms,
        },
        machine=machine(resolve_device("auto")),
    )
    return results


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"batching: {results['workload']['jobs']} verifications through the stack")
    for name in ("flush at", "jobs/s", "speed-up", "p50 s", "p95 s", "p99 s", "jobs/batch", "succeeded"):
        table.add_column(name, justify="right")
    for size, figures in results["per_size"].items():
        latency = figures["latency_s"]
        per_batch = figures["mean_jobs_per_batch"]
        table.add_row(
            size,
            f"{figures['jobs_per_s']:.1f}",
            f"{results['speedup_over_1'].get(size, float('nan')):.2f}x",
            f"{latency['p50']:.2f}",
            f"{latency['p95']:.2f}",
            f"{latency['p99']:.2f}",
            "-" if per_batch is None else f"{per_batch:.1f}",
            f"{figures['succeeded']}/{figures['jobs']}",
        )
    console = Console()
    console.print(table)
    stages = Table(
        title="worker time per job by stage, ms (from its metrics)",
        caption="detect = decode + detect + landmarks + align",
    )
    names = list(next(iter(results["per_size"].values())).get("worker_ms_per_job", {}))
    stages.add_column("flush at", justify="right")
    for name in names + ["total"]:
        stages.add_column(name, justify="right")
    for size, figures in results["per_size"].items():
        per_job = figures.get("worker_ms_per_job", {})
        stages.add_row(size, *(f"{per_job.get(n, 0):.1f}" for n in names), f"{sum(per_job.values()):.1f}")
    console.print(stages)


def main() -> None:
    from shared.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="verifications per flush size")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="flush sizes, comma-separated")
    parser.add_argument("--flush-ms", type=int, default=20, help="flush interval (BIOFLEET_FLUSH_INTERVAL_MS)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight while submitting")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for one size's jobs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results = run(args.jobs, sizes, args.flush_ms, args.concurrency, args.timeout, get_settings().faces_dir)
    write_results(args.out, results)
    print_table(results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
