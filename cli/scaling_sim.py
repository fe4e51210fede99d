"""Autoscaling simulator: an arrival trace through a scaling policy and a fleet of batching workers.

Trace (read_trace): CSV with a header `time_s,<queue>,...` and rows of time in seconds and jobs/s
per queue; lines starting with '#' are comments. Rates are interpolated linearly between rows and
the trace ends at the last row. Arrivals are Poisson around those rates (seeded), one FIFO for all
queues, as one batch task consumes every queue.

Policy: target tracking on the backlog (shared.scaling.desired_replicas), read every poll_s; the
metric is `depth` (waiting + reserved, what biofleet exports) or `waiting` (the Redis list length
alone, what KEDA's redis list scaler reads). Scale-up is limited to max(scale_up_pods,
scale_up_percent of the fleet) per scale_period_s; scale-down uses the highest desired count of
the last cooldown_s (the HPA stabilisation window) and removes at most scale_down_pods per period.
A new worker takes jobs startup_s after it was asked for (node, image pull, model load).

Worker: celery-batches flushes a batch when batch_size jobs are buffered or flush_interval after
the first one; one batch at a time; a stopping worker finishes its batch first (warm shutdown).
Service time of a batch of n = n x (embed ms per face at batch n + other ms per face), from
bench/results/model.json when present: embed from "port_ms_per_face" (interpolated by batch
size), other = "pipeline_ms_per_image_batch_32" - embed at 32 (decode, detect, landmarks, align
per image). Without that file: DEFAULT_EMBED_MS_PER_FACE and DEFAULT_OTHER_MS_PER_FACE below
(the same benchmark on a 2-core x86 CPU, rounded).

simulate(trace, policy, worker, price_per_hour, seed) -> Result (waits, worker-minutes, cost,
peak workers, and a time series for plot()).
"""

import csv
import heapq
import json
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from shared.scaling import desired_replicas

MODEL_RESULTS = Path(__file__).resolve().parent / "results" / "model.json"
DEFAULT_EMBED_MS_PER_FACE = {1: 5.6, 8: 2.9, 32: 2.5, 64: 2.7}
DEFAULT_OTHER_MS_PER_FACE = 14.3
DEFAULT_PRICE_PER_HOUR = 1.006  # g5.xlarge on demand, us-east-1


# --- trace ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """times: seconds (increasing); rates: {queue: jobs/s at each time}."""

    times: np.ndarray
    rates: dict[str, np.ndarray]
    name: str = "trace"

    @property
    def queues(self) -> list[str]:
        return list(self.rates)

    @property
    def duration(self) -> float:
        return float(self.times[-1])

    def rate_at(self, t: float) -> dict[str, float]:
        """Jobs/s per queue at time t (0 outside the trace)."""
        if t < self.times[0] or t > self.times[-1]:
            return dict.fromkeys(self.rates, 0.0)
        return {q: float(np.interp(t, self.times, r)) for q, r in self.rates.items()}

    def expected_jobs(self) -> float:
        """Jobs the rates imply over the whole trace."""
        return float(sum(np.trapezoid(r, self.times) for r in self.rates.values()))


def read_trace(path: Path) -> Trace:
    """A Trace from a CSV file (see the module docstring for the format)."""
    path = Path(path)
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row and not row[0].lstrip().startswith("#")]
    if len(rows) < 3:
        raise ValueError(f"{path}: need a header and at least two rows")
    header = [name.strip() for name in rows[0]]
    if header[0] != "time_s" or len(header) < 2:
        raise ValueError(f"{path}: the header must be time_s followed by queue names")
    values = np.array([[float(v) for v in row] for row in rows[1:]], dtype=float)
    if values.shape[1] != len(header):
        raise ValueError(f"{path}: every row needs {len(header)} values")
    times = values[:, 0]
    if np.any(np.diff(times) < 0) or times[0] != 0:
        raise ValueError(f"{path}: time_s must start at 0 and never decrease")
    if np.any(values[:, 1:] < 0):
        raise ValueError(f"{path}: rates must be >= 0")
    return Trace(times=times, rates={q: values[:, i + 1] for i, q in enumerate(header[1:])}, name=path.stem)


def arrivals(trace: Trace, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Poisson arrivals: (times in s, sorted; queue index of each job into trace.queues)."""
    rng = np.random.default_rng(seed)
    seconds = int(math.ceil(trace.duration))
    mids = np.minimum(np.arange(seconds) + 0.5, trace.duration)
    widths = np.minimum(np.arange(seconds) + 1.0, trace.duration) - np.arange(seconds)
    means = np.stack([np.interp(mids, trace.times, r) * widths for r in trace.rates.values()], axis=1)
    counts = rng.poisson(means)  # (seconds, queues)
    flat = counts.ravel()
    second = np.repeat(np.repeat(np.arange(seconds), len(trace.queues)), flat)
    queue = np.repeat(np.tile(np.arange(len(trace.queues), dtype=np.int8), seconds), flat)
    times = second + rng.random(len(second)) * np.repeat(np.repeat(widths, len(trace.queues)), flat)
    order = np.argsort(times, kind="stable")
    return times[order], queue[order]


# --- models -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    per_worker: float = 8.0  # target backlog per worker
    min_replicas: int = 2
    max_replicas: int = 8
    activation: int = 0  # backlog at or under this is idle (-> min_replicas)
    poll_s: float = 15.0  # how often the metric is read
    cooldown_s: float = 300.0  # scale-down stabilisation window
    scale_up_pods: int = 4
    scale_up_percent: float = 100.0
    scale_down_pods: int = 2
    scale_period_s: float = 60.0
    startup_s: float = 180.0  # asked for -> taking jobs
    metric: Literal["depth", "waiting"] = "depth"


@dataclass(frozen=True)
class WorkerModel:
    batch_size: int = 32
    flush_interval_s: float = 0.02
    prefetch_batches: int = 2
    embed_ms_per_face: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_EMBED_MS_PER_FACE))
    other_ms_per_face: float = DEFAULT_OTHER_MS_PER_FACE
    source: str = "defaults"

    def batch_s(self, n: int) -> float:
        """Seconds one batch of n jobs takes."""
        sizes = sorted(self.embed_ms_per_face)
        embed = float(np.interp(n, sizes, [self.embed_ms_per_face[s] for s in sizes]))
        return n * (embed + self.other_ms_per_face) / 1000.0

    @property
    def jobs_per_s(self) -> float:
        """One worker's throughput at full batches."""
        return self.batch_size / self.batch_s(self.batch_size)

    @classmethod
    def from_results(cls, path: Path | None = MODEL_RESULTS, **params) -> "WorkerModel":
        """Service times from a bench.model results file when it exists, else the defaults."""
        if path is None or not Path(path).exists():
            return cls(**params)
        results = json.loads(Path(path).read_text())
        embed = {int(size): float(ms) for size, ms in results["port_ms_per_face"].items()}
        pipeline = results.get("pipeline_ms_per_image_batch_32")
        other = pipeline - np.interp(32, sorted(embed), [embed[s] for s in sorted(embed)]) if pipeline else None
        if other is None or other <= 0:
            stages = results.get("stages_ms_per_face", {}).get("biofleet", {})
            other = sum(ms for stage, ms in stages.items() if stage != "embed") or DEFAULT_OTHER_MS_PER_FACE
        return cls(embed_ms_per_face=embed, other_ms_per_face=float(other), source=str(path), **params)


@dataclass
class Result:
    policy: Policy
    jobs: int
    served: int
    wait_p50_s: float
    wait_p95_s: float
    wait_p99_s: float
    worker_minutes: float
    cost: float
    peak_workers: int
    max_depth: int
    end_s: float
    series: dict = field(repr=False, default_factory=dict)

    def summary(self) -> dict:
        """The figures without the time series, JSON-ready."""
        out = {k: v for k, v in asdict(self).items() if k not in ("series", "policy")}
        out["policy"] = asdict(self.policy)
        return out


# --- simulation -------------------------------------------------------------------------------

_READY, _FREE, _FLUSH, _WAKE, _TICK = range(5)


@dataclass
class _Worker:
    asked_at: float
    state: str = "starting"  # starting | idle | filling | busy
    stopping: bool = False


def simulate(
    trace: Trace,
    policy: Policy,
    worker: WorkerModel,
    price_per_hour: float = DEFAULT_PRICE_PER_HOUR,
    seed: int = 0,
    max_tail_s: float | None = None,
) -> Result:
    """Replay trace through policy and worker model; see the module docstring.

    The run ends when every job is done and the fleet is back at its floor (or max_tail_s after
    the trace, default max(3600, trace duration)); worker-minutes count every worker from the
    moment it was asked for until it left or the run ended.
    """
    arr, _queue = arrivals(trace, seed)
    n = len(arr)
    waits = np.full(n, np.nan)
    B = worker.batch_size
    cap_s = trace.duration + (max_tail_s if max_tail_s is not None else max(3600.0, trace.duration))

    events: list = []
    seq = 0

    def push(t: float, kind: int, wid: int = -1, k: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, wid, k))

    workers: dict[int, _Worker] = {}
    idle: set[int] = set()
    next_id = 0
    head = 0  # first job no worker has taken
    completed = 0
    filler: int | None = None
    wake_at = math.inf
    worker_seconds = 0.0
    peak = 0
    max_depth = 0

    def leave(wid: int, t: float) -> None:
        nonlocal worker_seconds
        w = workers.pop(wid)
        worker_seconds += t - w.asked_at
        idle.discard(wid)

    def start_batch(wid: int, t: float) -> None:
        nonlocal head
        arrived = int(np.searchsorted(arr, t, side="right"))
        k = min(B, arrived - head)
        waits[head : head + k] = t - arr[head : head + k]
        head += k
        workers[wid].state = "busy"
        idle.discard(wid)
        push(t + worker.batch_s(k), _FREE, wid, k)

    def dispatch(t: float) -> None:
        nonlocal filler, wake_at
        while idle and filler is None and head < n:
            arrived = int(np.searchsorted(arr, t, side="right"))
            if arrived <= head:
                if arr[head] < wake_at or wake_at <= t:
                    wake_at = float(arr[head])
                    push(wake_at, _WAKE)
                return
            wid = idle.pop()
            if arrived - head >= B:
                start_batch(wid, t)
                continue
            flush_at = arr[head] + worker.flush_interval_s
            if head + B - 1 < n:
                flush_at = min(flush_at, arr[head + B - 1])
            if flush_at <= t:
                start_batch(wid, t)
            else:
                filler = wid
                workers[wid].state = "filling"
                push(float(flush_at), _FLUSH, wid)

    def add_worker(t: float) -> None:
        nonlocal next_id
        workers[next_id] = _Worker(asked_at=t)
        push(t + policy.startup_s, _READY, next_id)
        next_id += 1

    def remove_workers(count: int, t: float) -> None:
        nonlocal filler
        active = [wid for wid, w in workers.items() if not w.stopping]
        order = {"starting": 0, "idle": 1, "filling": 2, "busy": 3}
        for wid in sorted(active, key=lambda i: (order[workers[i].state], -i))[:count]:
            w = workers[wid]
            if w.state == "busy":
                w.stopping = True  # warm shutdown: leaves when its batch is done
                continue
            if wid == filler:
                filler = None
            leave(wid, t)

    for _ in range(policy.min_replicas):
        workers[next_id] = _Worker(asked_at=0.0, state="idle")
        idle.add(next_id)
        next_id += 1

    history: deque = deque()  # (t, raw desired) for the stabilisation window
    fleet: deque = deque()  # (t, fleet size) for the rate limits
    series = {"t": [], "depth": [], "waiting": [], "workers": [], "ready": [], "desired": []}
    series["arrivals"] = {q: [] for q in trace.queues}
    push(0.0, _TICK)
    end_s = 0.0

    while events:
        t, _, kind, wid, k = heapq.heappop(events)
        if kind == _TICK:
            arrived = int(np.searchsorted(arr, t, side="right"))
            depth = arrived - completed
            ready = sum(1 for w in workers.values() if w.state != "starting")
            waiting = max(0, depth - ready * worker.prefetch_batches * B)
            metric = depth if policy.metric == "depth" else waiting
            raw = desired_replicas(
                {"all": metric}, policy.per_worker, policy.min_replicas, policy.max_replicas, policy.activation
            )
            history.append((t, raw))
            while history[0][0] < t - policy.cooldown_s:
                history.popleft()
            current = sum(1 for w in workers.values() if not w.stopping)
            target = raw if raw > current else max(d for _, d in history)
            fleet.append((t, current))
            while fleet[0][0] < t - policy.scale_period_s:
                fleet.popleft()
            low, high = min(c for _, c in fleet), max(c for _, c in fleet)
            up_limit = low + max(policy.scale_up_pods, math.ceil(low * policy.scale_up_percent / 100))
            target = max(min(target, up_limit, policy.max_replicas), high - policy.scale_down_pods, policy.min_replicas)
            if target > current:
                for _ in range(target - current):
                    add_worker(t)
            elif target < current:
                remove_workers(current - target, t)
            peak = max(peak, len(workers))
            max_depth = max(max_depth, depth)
            for name, rate in trace.rate_at(t).items():
                series["arrivals"][name].append(rate)
            for name, value in (
                ("t", t),
                ("depth", depth),
                ("waiting", waiting),
                ("workers", len(workers)),
                ("ready", ready),
                ("desired", raw),
            ):
                series[name].append(value)
            dispatch(t)
            at_floor = sum(1 for w in workers.values() if not w.stopping) <= policy.min_replicas
            if (t >= trace.duration and completed == n and at_floor) or t >= cap_s:
                end_s = t
                break
            push(t + policy.poll_s, _TICK)
        elif kind == _READY:
            if wid in workers:
                workers[wid].state = "idle"
                idle.add(wid)
                dispatch(t)
        elif kind == _FREE:
            completed += k
            if workers[wid].stopping:
                leave(wid, t)
            else:
                workers[wid].state = "idle"
                idle.add(wid)
            dispatch(t)
        elif kind == _FLUSH:
            if filler == wid:
                filler = None
                start_batch(wid, t)
            dispatch(t)
        elif kind == _WAKE:
            dispatch(t)

    for w in workers.values():
        worker_seconds += end_s - w.asked_at
    served = waits[~np.isnan(waits)]
    p50, p95, p99 = (float(np.percentile(served, q)) if len(served) else math.nan for q in (50, 95, 99))
    minutes = worker_seconds / 60.0
    return Result(
        policy=policy,
        jobs=n,
        served=int(len(served)),
        wait_p50_s=p50,
        wait_p95_s=p95,
        wait_p99_s=p99,
        worker_minutes=minutes,
        cost=minutes / 60.0 * price_per_hour,
        peak_workers=peak,
        max_depth=int(max_depth),
        end_s=end_s,
        series=series,
    )


# --- output -----------------------------------------------------------------------------------


def plot(trace: Trace, results: list[Result], path: Path) -> Path:
    """A PNG of arrivals per queue, queue depth and workers over time, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_in, ax_depth, ax_workers) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    first = results[0].series
    minutes = np.asarray(first["t"]) / 60.0
    ax_in.stackplot(minutes, *[first["arrivals"][q] for q in trace.queues], labels=trace.queues, alpha=0.8)
    ax_in.set_ylabel("arrivals (jobs/s)")
    ax_in.legend(loc="upper right", fontsize="small", ncol=len(trace.queues))
    ax_in.set_title(f"{trace.name}: {results[0].jobs:,} jobs")
    for result in results:
        s, label = result.series, f"target {result.policy.per_worker:g}/worker"
        t = np.asarray(s["t"]) / 60.0
        (line,) = ax_depth.plot(t, s["depth"], label=label)
        ax_workers.step(t, s["workers"], where="post", color=line.get_color(), label=f"{label}: asked for")
        ax_workers.step(t, s["ready"], where="post", color=line.get_color(), linestyle=":", label=f"{label}: ready")
    ax_depth.set_ylabel("queue depth (waiting + reserved)")
    ax_depth.legend(loc="upper right", fontsize="small")
    ax_depth.set_ylim(bottom=0)
    ax_workers.set_ylabel("workers")
    ax_workers.set_xlabel("minutes")
    ax_workers.set_ylim(0, max(r.peak_workers for r in results) * 1.7 + 1)  # room for the legend
    ax_workers.legend(loc="upper right", fontsize="small", ncol=len(results))
    for ax in (ax_in, ax_depth, ax_workers):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
