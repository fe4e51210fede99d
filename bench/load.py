"""Load benchmark: an open-loop HTTP generator against the real stack, on loopback only.

Run: python -m bench.load [--rates 2,5,10,15,20,30,40] [--duration 10] [--out bench/results/load.json]
     python -m bench.load --enqueue-only   (the two enqueue rates alone, about a minute and a half)

A private stack (Valkey, Postgres, file blobs, the API, one worker with default settings) in a
temporary folder. Three measurements:
- enqueue: with no worker consuming, `--enqueue-jobs` verifications posted as fast as the API
  (`python -m api`, `--api-workers` processes) answers them, from `--clients` processes with
  `--concurrency` requests in flight each, and the same jobs again as POST /v1/batches of
  `--batch-size` verifications: the API's enqueue rates (jobs/s), latency and CPU (bench/enqueue.py);
- load: at each fixed arrival rate, verifications are sent on schedule for `--duration` seconds
  whether or not earlier ones were answered (open loop; biofleet_client.AsyncClient), then the
  generator waits up to `--drain` seconds for the jobs: API submit latency p50/p99, completion latency
  (request sent -> finished_at in Postgres) p50/p95/p99, and the highest rate at which completion
  p95 stays under 1 s. Rates past the knee (p95 over `--stop-above` s) are not tried;
- memory: peak RSS of the worker (its process tree) and of the API while under load.
Prints a table, writes JSON and a PNG of the latency percentiles against offered load.
"""

import argparse
import asyncio
import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import (
    BenchStack,
    Sent,
    api_client,
    enroll_all,
    load_faces,
    submit,
    verify_bodies,
    wait_jobs,
    wire_body,
)
from bench.stats import RESULTS_DIR, max_rate_under, percentile, write_results

RATES = (2, 5, 10, 15, 20, 30, 40)
RESULTS = RESULTS_DIR / "load.json"
PLOT = RESULTS_DIR / "load.png"
P95_LIMIT_S = 1.0


class PeakRss:
    """Samples the resident memory of named process trees in a thread; peaks in MiB."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.2):
        self.pids = pids
        self.interval_s = interval_s
        self.peak_mib = {name: 0.0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def tree_rss(pid: int) -> int:
        """RSS in bytes of pid and all its descendants (0 when it is gone)."""
        import psutil

        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak_mib[name] = max(self.peak_mib[name], self.tree_rss(pid) / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "PeakRss":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


async def _open_loop(api_url: str, key: str, bodies: list[dict], rate: float) -> list[Sent]:
    """Send bodies[i] at start + i / rate, each in its own task; gather the answers."""
    client = api_client(api_url, key, connections=512)
    async with client.http:
        start = time.perf_counter()
        tasks = []
        for index, body in enumerate(bodies):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(submit(client, "verify", body)))
        return list(await asyncio.gather(*tasks))


def load_step(stack: BenchStack, bodies: list[dict], rate: float, drain_s: float) -> dict:
    """One arrival rate: send every body on schedule, wait for the jobs; the step's figures."""
    started = time.monotonic()
    sent = asyncio.run(_open_loop(stack.api_url, stack.key, bodies, rate))
    sending_s = time.monotonic() - started
    accepted = [s for s in sent if s.job_id]
    jobs = wait_jobs(stack, [s.job_id for s in accepted], drain_s)
    completion = []
    for s in sent:
        job = jobs.get(s.job_id) if s.job_id else None
        completion.append(job.finished - s.sent if job is not None and job.finished is not None else float("inf"))
    submit = [s.latency_s for s in accepted]
    finished = sum(v != float("inf") for v in completion)
    return {
        "rate": rate,
        "sent": len(sent),
        "accepted": len(accepted),
        "finished": finished,
        "achieved_rate": len(sent) / sending_s if sending_s else None,
        "submit_p50_s": percentile(submit, 50),
        "submit_p99_s": percentile(submit, 99),
        "completion_p50_s": percentile(completion, 50),
        "completion_p95_s": percentile(completion, 95),
        "completion_p99_s": percentile(completion, 99),
    }


def measure_enqueue(stack: BenchStack, bodies: list[dict], args) -> dict:
    """Both enqueue rates with no worker consuming: single submits, then batches."""
    from bench.enqueue import batch_bodies, measure

    wire = [wire_body(body) for body in bodies]
    singles = [json.dumps(body).encode() for body in wire]
    single = measure(stack, singles, "/v1/verifications", args.clients, args.concurrency)
    batches = batch_bodies(wire, args.batch_size)
    batch = measure(stack, batches, "/v1/batches", args.clients, args.batch_concurrency)
    batch["batch_size"] = args.batch_size
    return {
        "enqueue_jobs_per_s": single["jobs_per_s"],
        "batch_enqueue_jobs_per_s": batch["jobs_per_s"],
        "enqueue": single,
        "batch_enqueue": batch,
        "api_workers": args.api_workers or os.cpu_count(),
    }


def run(args, faces_dir: Path) -> dict:
    from rich.console import Console

    from bench.model import machine
    from worker.face.embed import resolve_device

    say = Console(stderr=True).log
    faces = load_faces(faces_dir)
    rates = sorted(float(r) for r in args.rates.split(",") if r)
    most = int(max(rates) * args.duration)
    bodies = verify_bodies(faces, max(most, args.enqueue_jobs))
    with BenchStack() as stack:
        stack.start_api(api_workers=args.api_workers)
        say(f"enqueue rates: {args.enqueue_jobs} verifications, singly and in batches, no worker consuming")
        enqueue = measure_enqueue(stack, bodies[: args.enqueue_jobs], args)
        if args.enqueue_only:  # dated apart from the full run whose load figures stay
            return {
                **enqueue,
                "enqueue_machine": machine(resolve_device("auto")),
                "enqueue_date": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        worker = stack.start_worker()
        enroll_all(stack, faces)
        load_step(stack, bodies[:10], 10, args.drain)  # warm-up
        steps = []
        with PeakRss({"worker": worker.pid, "api": stack.api_proc.pid}) as memory:
            for rate in rates:
                count = max(1, int(rate * args.duration))
                step = load_step(stack, bodies[:count], rate, args.drain)
                steps.append(step)
                say(
                    f"{rate:g} jobs/s: completion p95 {step['completion_p95_s']:.2f} s, "
                    f"{step['finished']}/{step['sent']} finished"
                )
                if step["completion_p95_s"] > args.stop_above:
                    say(f"completion p95 over {args.stop_above:g} s: higher rates not tried")
                    break
    return {
        **enqueue,
        "max_rate_p95_under_1s": max_rate_under(steps, P95_LIMIT_S),
        "steps": steps,
        "peak_rss_mib": memory.peak_mib,
        "workload": {
            "kind": "verify",
            "duration_s": args.duration,
            "drain_s": args.drain,
            "worker": "one, default settings",
        },
        "machine": machine(resolve_device("auto")),
    }


def plot(results: dict, path: Path) -> Path:
    """Latency percentiles (log scale) against offered load; PNG at path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = results["steps"]
    rates = [s["rate"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, style in (
        ("submit_p50_s", "API submit p50", "--"),
        ("submit_p99_s", "API submit p99", ":"),
        ("completion_p50_s", "completion p50", "-"),
        ("completion_p95_s", "completion p95", "-"),
        ("completion_p99_s", "completion p99", "-"),
    ):
        values = [s[key] if s[key] is not None and s[key] != float("inf") else float("nan") for s in steps]
        ax.plot(rates, values, style, marker="o", label=label)
    ax.axhline(P95_LIMIT_S, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("offered load (verifications/s)")
    ax.set_ylabel("latency (s)")
    ax.set_title("biofleet under open-loop load, one CPU worker")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="open-loop load: verifications through the stack, one worker")
    for name in (
        "offered/s",
        "sent",
        "finished",
        "submit p50 ms",
        "submit p99 ms",
        "done p50 s",
        "done p95 s",
        "done p99 s",
    ):
        table.add_column(name, justify="right")

    def sec(value):
        return "-" if value is None or value == float("inf") else f"{value:.2f}"

    for s in results.get("steps", []):
        table.add_row(
            f"{s['rate']:g}",
            str(s["sent"]),
            str(s["finished"]),
            f"{1000 * s['submit_p50_s']:.0f}",
            f"{1000 * s['submit_p99_s']:.0f}",
            sec(s["completion_p50_s"]),
            sec(s["completion_p95_s"]),
            sec(s["completion_p99_s"]),
        )
    if results.get("steps"):
        console.print(table)
    summary = Table(title="load summary", show_header=False)
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    best = results.get("max_rate_p95_under_1s")
    if "steps" in results:
        summary.add_row("highest rate with completion p95 < 1 s", "none" if best is None else f"{best:g} jobs/s")
    for name, label in (("enqueue", "single submits"), ("batch_enqueue", "POST /v1/batches")):
        run = results[name]
        summary.add_row(f"API enqueue rate, {label}, no worker consuming", f"{run['jobs_per_s']:.0f} jobs/s")
        summary.add_row(
            f"  latency p50 / p99 per request, {run['concurrency']} in flight x {run['client_processes']} clients",
            f"{1000 * run['latency_s']['p50']:.0f} / {1000 * run['latency_s']['p99']:.0f} ms",
        )
        summary.add_row(
            "  API CPU per job; API / generator share of the cores",
            f"{1000 * (run['api_cpu_s_per_job'] or 0):.2f} ms; {run['api_cpu_share']:.0%} / {run['client_cpu_share']:.0%}",
        )
    summary.add_row("API processes", str(results.get("api_workers")))
    summary.add_row(
        "load average during the enqueue runs", " ".join(f"{v:.1f}" for v in results["enqueue"]["load_average"])
    )
    for name, mib in results.get("peak_rss_mib", {}).items():
        summary.add_row(f"peak RSS, {name}", f"{mib:.0f} MiB")
    console.print(summary)


def main() -> None:
    from shared.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="arrival rates (jobs/s), comma-separated")
    parser.add_argument("--duration", type=float, default=10, help="seconds of arrivals per rate")
    parser.add_argument("--drain", type=float, default=60, help="seconds to wait for a rate's jobs")
    parser.add_argument("--stop-above", type=float, default=5, help="stop once completion p95 exceeds this (s)")
    parser.add_argument(
        "--enqueue-jobs",
        type=int,
        default=10000,
        help="jobs for the enqueue-rate measurements (fewer: noisier figures)",
    )
    parser.add_argument("--enqueue-only", action="store_true", help="only the enqueue rates (no worker, no load)")
    parser.add_argument("--api-workers", type=int, default=0, help="API processes (0: one per core)")
    parser.add_argument("--clients", type=int, default=3, help="client processes, enqueue measurements")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight per client, single submits")
    parser.add_argument("--batch-size", type=int, default=100, help="jobs per POST /v1/batches")
    parser.add_argument("--batch-concurrency", type=int, default=2, help="batches in flight per client")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--plot", type=Path, default=PLOT, help="PNG of latency against offered load")
    args = parser.parse_args()
    results = run(args, get_settings().faces_dir)
    if args.enqueue_only:  # keep the load figures of the last full run
        earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
        write_results(args.out, {**earlier, **results})
        print_tables(results)
        print(f"wrote {args.out}")
        return
    write_results(args.out, results)
    plot(results, args.plot)
    print_tables(results)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
