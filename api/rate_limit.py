"""Fixed window counters in Redis, shared by every API process.

retry_after_s(redis, key, limit, window_s, now=None) -> None while under the limit, else the
seconds until the window ends (per API key: counts the request).
failures_retry_after_s(redis, address, limit, window_s, now=None) -> the same for the failed
authentications of a client address, read without counting; count_failure(redis, address,
window_s, now=None) counts one. Redis keys hold hashes of API keys and addresses, never them.
"""

import hashlib
import time

PREFIX = "biofleet:rate:"
FAILURE_PREFIX = "biofleet:authfail:"


def _name(prefix: str, subject: str, window: int) -> str:
    return f"{prefix}{hashlib.sha256(subject.encode()).hexdigest()[:32]}:{window}"


def _retry(window: int, window_s: int, now: float) -> int:
    return max(1, int((window + 1) * window_s - now + 0.999))


def retry_after_s(redis, key: str, limit: int, window_s: int, now: float | None = None) -> int | None:
    """Count one request of `key` in the current window; None if allowed, else Retry-After seconds."""
    now = time.time() if now is None else now
    window = int(now // window_s)
    name = _name(PREFIX, key, window)
    pipe = redis.pipeline(transaction=False)
    pipe.incr(name)
    pipe.expire(name, window_s + 1)
    count = pipe.execute()[0]
    if count <= limit:
        return None
    return _retry(window, window_s, now)


def failures_retry_after_s(redis, address: str, limit: int, window_s: int, now: float | None = None) -> int | None:
    """None while address has fewer than limit failed authentications in this window, else Retry-After."""
    now = time.time() if now is None else now
    window = int(now // window_s)
    count = int(redis.get(_name(FAILURE_PREFIX, address, window)) or 0)
    return None if count < limit else _retry(window, window_s, now)


def count_failure(redis, address: str, window_s: int, now: float | None = None) -> None:
    """Count one failed authentication of address in the current window."""
    now = time.time() if now is None else now
    name = _name(FAILURE_PREFIX, address, int(now // window_s))
    pipe = redis.pipeline(transaction=False)
    pipe.incr(name)
    pipe.expire(name, window_s + 1)
    pipe.execute()
