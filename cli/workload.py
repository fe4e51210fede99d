"""`biofleet demo`: a small real workload through the running stack, ending in a summary table."""

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from shared.services import read_stack_file
from shared.settings import get_settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".bmp", ".webp"}
ENROLL_SAMPLES = 3


def _identities(root: Path) -> dict[str, list[Path]]:
    """ROOT/<identity>/<images> -> {identity: sorted image paths}, identities with 4+ images."""
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(images) > ENROLL_SAMPLES:
            found[folder.name] = images
    return found


class Client:
    """Submits jobs and waits for them through the Python client (biofleet_client), shared by the
    worker threads; jobs come back as their JSON."""

    def __init__(self, api_url: str, key: str):
        from biofleet_client import Client as ApiClient

        self.api = ApiClient(api_url, api_key=key, timeout=30)

    def submit(self, send: Callable[[Any], Any]) -> str:
        """The job id of send(api client)'s answer; a refusal ends the command with its code."""
        from biofleet_client import BiofleetError

        try:
            return send(self.api).id
        except BiofleetError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None

    def wait(self, job_id: str, deadline: float) -> dict:
        """The job once final, or as it stands at the deadline."""
        from biofleet_client import WaitTimeout

        try:
            job = self.api.wait(job_id, timeout=max(0.0, deadline - time.monotonic()), raise_on_failure=False)
        except WaitTimeout:
            job = self.api.get_job(job_id)
        return job.model_dump(mode="json")


def _latency_s(job: dict) -> float | None:
    if not job.get("finished_at"):
        return None
    done = datetime.fromisoformat(job["finished_at"])
    return (done - datetime.fromisoformat(job["submitted_at"])).total_seconds()


def _plan(identities: dict[str, list[Path]]) -> tuple[list, list]:
    """Enrollments (3 images each), then verifications (own and another identity) and identifications."""
    rng = random.Random(0)
    names = sorted(identities)
    enrollments = [(name, identities[name][:ENROLL_SAMPLES]) for name in names]
    probes = []
    for name in names:
        rest = identities[name][ENROLL_SAMPLES:]
        for path in rest[::2]:  # every other remaining image
            other = rng.choice([n for n in names if n != name]) if len(names) > 1 else None
            probes.append(("verify", name, name, path))
            if other:
                probes.append(("verify", other, name, path))
        probes.append(("identify", None, name, rest[0]))
    return enrollments, probes


def run_workload(client: Client, samples: Path, timeout: float) -> dict:
    identities = _identities(samples)
    if not identities:
        raise click.ClickException(f"no identity folders with {ENROLL_SAMPLES + 1}+ images in {samples}")
    enrollments, probes = _plan(identities)
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        enroll_ids = list(
            pool.map(
                lambda e: client.submit(lambda api: api.create_enrollment(e[0], e[1])),
                enrollments,
            )
        )
        enrolled = list(pool.map(lambda i: client.wait(i, deadline), enroll_ids))

        def submit_probe(probe):
            kind, claimed, _, path = probe
            if kind == "verify":
                return client.submit(lambda api: api.create_verification(claimed, path))
            return client.submit(lambda api: api.create_identification(path, top_k=3))

        probe_ids = list(pool.map(submit_probe, probes))
        probed = list(pool.map(lambda i: client.wait(i, deadline), probe_ids))
    elapsed = time.monotonic() - started
    return _summarise(enrolled + probed, probes, probed, elapsed)


def _summarise(jobs: list[dict], probes: list, probed: list[dict], elapsed: float) -> dict:
    statuses = Counter(job["status"] for job in jobs)
    failures = Counter(job["error"]["code"] for job in jobs if job["status"] == "failed")
    correct = total = 0
    for (kind, claimed, truth, _), job in zip(probes, probed):
        if job["status"] != "succeeded":
            continue
        total += 1
        if kind == "verify":
            correct += job["result"]["match"] == (claimed == truth)
        else:
            candidates = job["result"]["candidates"]
            correct += bool(candidates) and candidates[0]["subject_id"] == truth
    latencies = sorted(x for x in map(_latency_s, jobs) if x is not None)

    def pct(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    return {
        "jobs": len(jobs),
        "succeeded": statuses["succeeded"],
        "failed": dict(failures),
        "unfinished": len(jobs) - statuses["succeeded"] - statuses["failed"],
        "accuracy": correct / total if total else None,
        "jobs_per_s": len(jobs) / elapsed if elapsed else None,
        "latency_p50_s": pct(0.50),
        "latency_p95_s": pct(0.95),
    }


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="biofleet demo workload")
    table.add_column("measure")
    table.add_column("value", justify="right")
    failed = ", ".join(f"{k} {v}" for k, v in sorted(summary["failed"].items())) or "0"

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    rows = [
        ("jobs", str(summary["jobs"])),
        ("succeeded", str(summary["succeeded"])),
        ("failed (by code)", failed),
        ("unfinished", str(summary["unfinished"])),
        ("verification + identification accuracy", fmt(summary["accuracy"], ".1%")),
        ("jobs/s", fmt(summary["jobs_per_s"], ".1f")),
        ("latency p50 (s)", fmt(summary["latency_p50_s"], ".2f")),
        ("latency p95 (s)", fmt(summary["latency_p95_s"], ".2f")),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _curl_examples(api_url: str) -> str:
    return f"""No sample folder: try the API by hand (KEY from `biofleet keys create --tenant me`):
  curl -s -X POST {api_url}/v1/subjects/alice/enrollments -H "Authorization: Bearer $KEY" \\
       -F images=@alice1.jpg -F images=@alice2.jpg -F images=@alice3.jpg
  curl -s -X POST {api_url}/v1/verifications -H "Authorization: Bearer $KEY" \\
       -F subject_id=alice -F image=@probe.jpg
  curl -s -X POST {api_url}/v1/identifications -H "Authorization: Bearer $KEY" -F image=@probe.jpg
  curl -s {api_url}/v1/jobs/JOB_ID -H "Authorization: Bearer $KEY"
"""


@click.command()
@click.option(
    "--samples",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of <identity>/<images>; default: the LFW colour sample when present.",
)
@click.option("--api", "api_url", default=None, help="API base URL (default: the running stack's).")
@click.option("--key", default=None, help="API key (default: the running stack's first key).")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for all jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def demo(samples: Path | None, api_url: str | None, key: str | None, timeout: float, as_json: bool):
    """Enroll every identity of a sample folder with 3 images, verify and identify the rest."""
    settings = get_settings()
    stack = read_stack_file(settings.state_dir)
    api_url = api_url or stack.get("api_url") or f"http://{settings.api_host}:{settings.api_port}"
    samples = samples or settings.faces_dir / "lfw_colour"
    if not samples.is_dir():
        click.echo(_curl_examples(api_url))
        return
    key = key or stack.get("api_key_file") and Path(stack["api_key_file"]).read_text().strip()
    if not key:
        raise click.ClickException("no API key: pass --key or start the stack with `biofleet up`")
    summary = run_workload(Client(api_url, key), samples, timeout)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _print_summary(summary)
    if summary["unfinished"]:
        raise click.ClickException(f"{summary['unfinished']} jobs did not finish within {timeout:.0f} s")


COMMANDS = [demo]
