"""Cold-start benchmark: from `python -m worker` starting to its first batch done, with the
converted network weights cached and not.

Run: python -m bench.coldstart [--repeats 2] [--out bench/results/coldstart.json]

A private stack (Valkey, Postgres, file blobs, the API) in a temporary folder. Each try queues one
enrollment (3 lfw_colour images) while no worker runs, starts a worker and times how long until
that job's finished_at in Postgres. "not cached": BIOFLEET_MODEL_CACHE_DIR is a new empty folder,
so the worker converts dlib's .dat file; "cached": the folder the previous try filled. Tries
alternate (not cached, cached, ...) so that a busy machine slows both alike. Prints a table and
writes JSON with every try and the medians.
"""

import argparse
import statistics
import time
from pathlib import Path

from bench.harness import ENROLL_SAMPLES, BenchStack, load_faces, submit_all, wait_jobs
from bench.stats import RESULTS_DIR, write_results

RESULTS = RESULTS_DIR / "coldstart.json"
FIRST_BATCH_TIMEOUT_S = 300.0


def first_batch_s(stack: BenchStack, images: list[bytes], subject: str, cache_dir: Path) -> float:
    """Queue one enrollment, start a worker with cache_dir, return seconds until the job is final."""
    body = {"subject_id": subject, "images": images}
    sent = submit_all(stack.api_url, stack.key, "enroll", [body], 1)[0]
    if sent.job_id is None:
        raise SystemExit(f"enrollment refused with HTTP {sent.status}")
    started = time.time()
    worker = stack.spawn_worker(model_cache_dir=cache_dir)
    try:
        job = wait_jobs(stack, [sent.job_id], FIRST_BATCH_TIMEOUT_S, poll_s=0.05)[sent.job_id]
    finally:
        stack.stop_worker(worker)
    if job.finished is None:
        raise SystemExit(f"the first batch was not done within {FIRST_BATCH_TIMEOUT_S:.0f} s")
    return job.finished - started


def run(repeats: int, faces_dir: Path) -> dict:
    from rich.console import Console

    from bench.model import machine
    from worker.face.embed import resolve_device

    say = Console(stderr=True).log
    faces = load_faces(faces_dir)
    name, images = next(iter(faces.items()))
    tries: dict[str, list[float]] = {"not_cached": [], "cached": []}
    with BenchStack() as stack:
        stack.start_api()
        for attempt in range(repeats):
            cache_dir = stack.root / f"model-cache-{attempt}"
            for label in ("not_cached", "cached"):
                seconds = first_batch_s(stack, images[:ENROLL_SAMPLES], f"{name}-{attempt}-{label}", cache_dir)
                tries[label].append(seconds)
                say(f"try {attempt + 1}, weights {label.replace('_', ' ')}: first batch done after {seconds:.1f} s")
    return {
        "first_batch_s": {label: statistics.median(values) for label, values in tries.items()},
        "tries_s": tries,
        "repeats": repeats,
        "machine": machine(resolve_device("auto")),
    }


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="cold start: worker process start -> first batch done")
    for column in ("weights", "median s", "tries s"):
        table.add_column(column, justify="right" if column != "weights" else "left")
    for label, median in results["first_batch_s"].items():
        tries = ", ".join(f"{s:.1f}" for s in results["tries_s"][label])
        table.add_row(label.replace("_", " "), f"{median:.1f}", tries)
    Console().print(table)


def main() -> None:
    from shared.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="tries of each (median reported)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args()
    results = run(args.repeats, get_settings().faces_dir)
    write_results(args.out, results)
    print_table(results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
