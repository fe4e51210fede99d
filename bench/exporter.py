"""Depth exporter benchmark: how long one scrape of `python -m shared.exporter` takes while a
worker is paused with 200 jobs queued, at 10k and 1M rows in the jobs table.

Run: python -m bench.exporter [--rows 10000,1000000] [--scrapes 300] [--out bench/results/exporter.json]

A private stack (Valkey, Postgres, file blobs, the API, one worker) in a temporary folder. The
worker's pool process is suspended (SIGSTOP), then 200 identify jobs are posted: the worker holds
its prefetch (64) reserved and unacked, the rest wait in the list, so a scrape counts both. The
jobs table is filled to each row count (INSERT ... SELECT generate_series), and each scrape is a
new HTTP connection to /metrics, as Prometheus and KEDA make. For contrast, the time of the
per-status count over the jobs table that a scrape of the database would cost is measured at the
same sizes. Prints a table and writes JSON.
"""

import argparse
import io
import os
import sys
import time
import urllib.request
from pathlib import Path

from bench.harness import BenchStack, submit_all
from bench.stats import RESULTS_DIR, summarize, write_results
from shared import stack as services
from shared.queue_depth import queue_depths, reserved_counts

JOBS = 200
RESULTS = RESULTS_DIR / "exporter.json"
TARGET_MS = 50.0


def blank_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 120, 120)).save(buffer, format="PNG")
    return buffer.getvalue()


def fill_jobs(database_url: str, rows: int) -> int:
    """Add finished verify jobs until the table holds `rows`; returns the row count."""
    from sqlalchemy import text

    from shared.db.session import session_scope

    with session_scope(database_url) as session:
        have = session.execute(text("SELECT count(*) FROM jobs")).scalar_one()
        if rows > have:
            session.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, kind, status, cropped, blob_keys, attempts, published,"
                    " submitted_at, finished_at)"
                    " SELECT gen_random_uuid(), (SELECT id FROM tenants LIMIT 1), 'verify', 'succeeded', false,"
                    " '[]'::jsonb, 1, true, now(), now() FROM generate_series(1, :n)"
                ),
                {"n": rows - have},
            )
    with session_scope(database_url) as session:
        session.execute(text("ANALYZE jobs"))
        session.execute(text("CHECKPOINT"))  # the insert's writes flushed before the scrapes
        return session.execute(text("SELECT count(*) FROM jobs")).scalar_one()


def table_count_ms(database_url: str, repeats: int = 5) -> dict:
    """Milliseconds of `SELECT status, count(*) FROM jobs GROUP BY status` (a table scan)."""
    from sqlalchemy import text

    from shared.db.session import session_scope

    times = []
    with session_scope(database_url) as session:
        for _ in range(repeats):
            start = time.perf_counter()
            session.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
            times.append((time.perf_counter() - start) * 1000)
    return summarize(times)


def scrape_ms(url: str, scrapes: int) -> tuple[dict, str]:
    times, body = [], ""
    for _ in range(scrapes):
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        times.append((time.perf_counter() - start) * 1000)
    return summarize(times), body


def wait_until(check, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def run(row_counts: list[int], scrapes: int) -> dict:
    import psutil
    import redis

    with BenchStack() as stack:
        stack.start_api()
        worker = stack.start_worker(sweep_interval_s=0, retention_interval_s=0, batch_size=32, prefetch_batches=2)
        pool = psutil.Process(worker.pid).children()
        for process in pool:
            process.suspend()
        client = redis.Redis.from_url(stack.redis_url)
        body = {"image": blank_png()}
        sent = submit_all(stack.api_url, stack.key, "identify", [body] * JOBS)
        assert all(s.status == 202 for s in sent), "a submission was refused"
        wait_until(lambda: sum(queue_depths(client).values()) == JOBS, "200 jobs in the depth")
        wait_until(lambda: reserved_counts(client)["identify"] > 0, "the worker to reserve jobs")
        depth, reserved = queue_depths(client), reserved_counts(client)
        port = services.free_port()
        exporter = services.start_process(
            [sys.executable, "-m", "shared.exporter"],
            stack._env({"exporter_port": port, "metrics_host": "127.0.0.1"}),
            stack.root / "logs" / "exporter.log",
        )
        stack.processes.append(exporter)
        url = f"http://127.0.0.1:{port}/metrics"
        services.wait_http(url, 60)
        scrape_ms(url, 20)  # warm-up
        per_rows = {}
        for rows in row_counts:
            count = fill_jobs(stack.database_url, rows)
            load = os.getloadavg()[0]
            figures, text = scrape_ms(url, scrapes)
            assert 'biofleet_queue_depth{queue="identify"} 200.0' in text, text
            per_rows[str(rows)] = {
                "rows": count,
                "scrape_ms": figures,
                "load_average_1m": round(load, 2),
                "table_count_ms": table_count_ms(stack.database_url),
            }
        for process in pool:
            process.resume()
        client.close()
    return {
        "jobs_queued": JOBS,
        "depth": depth,
        "reserved": reserved,
        "scrapes": scrapes,
        "target_ms": TARGET_MS,
        "per_rows": per_rows,
    }


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"depth exporter /metrics, {results['jobs_queued']} jobs queued, worker paused")
    for column in ("jobs rows", "scrape p50 ms", "p95 ms", "p99 ms", "max ms", "table count ms (p50)", "load"):
        table.add_column(column, justify="right")
    for figures in results["per_rows"].values():
        s = figures["scrape_ms"]
        table.add_row(
            f"{figures['rows']:,}",
            f"{s['p50']:.2f}",
            f"{s['p95']:.2f}",
            f"{s['p99']:.2f}",
            f"{s['max']:.2f}",
            f"{figures['table_count_ms']['p50']:.1f}",
            f"{figures['load_average_1m']:.1f}",
        )
    Console().print(table)
    print(f"depth {results['depth']} (reserved {results['reserved']}); target: every scrape under {TARGET_MS:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.exporter", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,1000000", help="jobs table sizes, comma-separated, ascending")
    parser.add_argument("--scrapes", type=int, default=300, help="scrapes per table size")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    results = run([int(r) for r in args.rows.split(",") if r], args.scrapes)
    write_results(args.out, results)
    print_table(results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
