"""The API's enqueue rate with no worker consuming, for bench/load.py.

measure(stack, bodies, path, processes, concurrency) -> {jobs, accepted, requests, jobs_per_s,
latency_s, api_cpu_s, api_cpu_share, client_cpu_share}: every body (bytes, already JSON) is POSTed
to path from `processes` client processes with `concurrency` requests in flight each (closed
loop). The API's CPU time (its whole process tree) is read around the run: api_cpu_share is the
share of the machine's cores the API used, client_cpu_share the generator's, so a reader can
tell whether the generator or the API was the limit. Queues are emptied after.
batch_bodies(bodies, size) -> POST /v1/batches bodies of `size` verify items each.
"""

import asyncio
import json
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from urllib.parse import urlsplit

from bench.harness import BenchStack, purge_queues
from bench.stats import summarize


def batch_bodies(bodies: list[dict], size: int) -> list[bytes]:
    """POST /v1/batches bodies of `size` verify items each, from verification bodies."""
    items = [{"kind": "verify", **body} for body in bodies]
    return [json.dumps({"jobs": items[i : i + size]}).encode() for i in range(0, len(items) - size + 1, size)]


class _Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the answer by its
    Content-Length: a generator that costs far less CPU per request than the API it measures
    (an httpx request costs about as much as the submit itself)."""

    def __init__(self, api_url: str, key: str, path: str):
        parsed = urlsplit(api_url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, payload: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.head + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = {name.strip().lower(): value.strip() for name, value in fields.items()}.get("content-length")
        if length is None:
            raise ValueError("an answer without Content-Length")
        return status, await self.reader.readexactly(int(length))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _lanes(api_url: str, key: str, path: str, payloads: list[bytes], concurrency: int) -> list[tuple]:
    results: list[tuple] = []
    queue = list(payloads)[::-1]

    async def lane() -> None:
        connection = _Connection(api_url, key, path)
        try:
            while queue:
                payload = queue.pop()
                sent = time.perf_counter()
                try:
                    status, raw = await connection.post(payload)
                    body = json.loads(raw) if status == 202 else {}
                except Exception:
                    connection.close()
                    connection = _Connection(api_url, key, path)
                    status, body = 0, {}
                accepted = body.get("accepted", 1 if "id" in body else 0) if status == 202 else 0
                results.append((status, accepted, time.perf_counter() - sent))
        finally:
            connection.close()

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return results


def _client(args: tuple) -> tuple[list[tuple], float]:
    """One client process: its answers and the CPU seconds it used."""
    start = time.process_time()
    results = asyncio.run(_lanes(*args))
    return results, time.process_time() - start


def _tree_cpu_s(pid: int) -> float:
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            times = proc.cpu_times()
            total += times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


def measure(stack: BenchStack, payloads: list[bytes], path: str, processes: int, concurrency: int) -> dict:
    """See the module docstring."""
    shares = [payloads[i::processes] for i in range(processes)]
    jobs = [(stack.api_url, stack.key, path, share, concurrency) for share in shares if share]
    with ProcessPoolExecutor(len(jobs), mp_context=get_context("fork")) as pool:
        list(pool.map(_client, [(a, k, p, s[:2], 1) for a, k, p, s, _ in jobs]))  # connect, warm up
        purge_queues(stack)
        api_cpu = _tree_cpu_s(stack.api_proc.pid)
        start = time.monotonic()
        answers = list(pool.map(_client, jobs))
        elapsed = time.monotonic() - start
        api_cpu = _tree_cpu_s(stack.api_proc.pid) - api_cpu
    purge_queues(stack)
    results = [result for part, _ in answers for result in part]
    accepted = sum(result[1] for result in results)
    cores = os.cpu_count() or 1
    return {
        "requests": len(results),
        "refused": {str(code): n for code, n in Counter(r[0] for r in results if r[0] != 202).items()},
        "accepted": accepted,
        "client_processes": len(jobs),
        "concurrency": concurrency,
        "jobs_per_s": accepted / elapsed,
        "latency_s": summarize([result[2] for result in results if result[0] == 202]),
        "api_cpu_s_per_job": api_cpu / accepted if accepted else None,
        "api_cpu_share": api_cpu / elapsed / cores,
        "client_cpu_share": sum(cpu for _, cpu in answers) / elapsed / cores,
        "load_average": os.getloadavg(),
    }
