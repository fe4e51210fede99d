"""`biofleet demo`: a small real workload through the running stack, ending in a summary table."""

import base64
import json
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

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


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


class Client:
    """Submits jobs and waits for them; one httpx client shared by the worker threads."""

    def __init__(self, api_url: str, key: str):
        import httpx

        self.http = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def submit(self, path: str, body: dict) -> str:
        response = self.http.post(path, json=body)
        if response.status_code != 202:
            raise click.ClickException(f"POST {path}: {response.status_code} {response.text[:200]}")
        return response.json()["id"]

    def wait(self, job_id: str, deadline: float) -> dict:
        while True:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
                return job
            time.sleep(0.2)


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
                lambda e: client.submit(f"/v1/subjects/{e[0]}/enrollments", {"images": [_b64(p) for p in e[1]]}),
                enrollments,
            )
        )
        enrolled = list(pool.map(lambda i: client.wait(i, deadline), enroll_ids))

        def submit_probe(probe):
            kind, claimed, _, path = probe
            if kind == "verify":
                return client.submit("/v1/verifications", {"subject_id": claimed, "image": _b64(path)})
            return client.submit("/v1/identifications", {"image": _b64(path), "top_k": 3})

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
