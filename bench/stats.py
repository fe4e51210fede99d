"""Small helpers every benchmark shares: percentiles, latency summaries, JSON results.

percentile(values, q) -> float; summarize(values) -> {n, mean, p50, p95, p99, max};
max_rate_under(steps, limit_s, key) -> the highest offered rate whose figure stays under limit_s;
write_results(path, data) -> path (indented JSON, parent folders made).
"""

import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100) of values, linear between closest ranks (numpy's default).
    An empty input gives nan; an infinite value (a job that never finished) stays infinite."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, not {q}")
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    if low == high or ordered[low] == ordered[high]:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summarize(values: Sequence[float]) -> dict:
    """{n, mean, p50, p95, p99, max} of values (nan for an empty input)."""
    finite = [v for v in values if math.isfinite(v)]
    return {
        "n": len(values),
        "mean": sum(finite) / len(finite) if finite and len(finite) == len(values) else math.nan,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def max_rate_under(steps: Sequence[dict], limit_s: float, key: str = "completion_p95_s") -> float | None:
    """steps: dicts with "rate" and `key`. The highest rate such that it and every lower rate kept
    `key` under limit_s (a load level past the knee does not count again); None when none did."""
    best = None
    for step in sorted(steps, key=lambda s: s["rate"]):
        value = step.get(key)
        if value is None or not math.isfinite(value) or value >= limit_s:
            break
        best = step["rate"]
    return best


def _jsonable(value):
    """nan and inf become None (JSON has neither); containers are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_results(path: Path, data: dict) -> Path:
    """Write data as indented JSON to path (a "date" is added when missing); returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**data}
    data.setdefault("date", datetime.now(UTC).isoformat(timespec="seconds"))
    path.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    return path
