"""Per-API-key rate limit: a fixed window counter in Redis, shared by every API process.

retry_after_s(redis, key, limit, window_s, now=None) -> None while under the limit, else the
seconds until the window ends. The Redis key holds a hash of the API key, never the key.
"""

import hashlib
import time

PREFIX = "biofleet:rate:"


def retry_after_s(redis, key: str, limit: int, window_s: int, now: float | None = None) -> int | None:
    """Count one request of `key` in the current window; None if allowed, else Retry-After seconds."""
    now = time.time() if now is None else now
    window = int(now // window_s)
    name = f"{PREFIX}{hashlib.sha256(key.encode()).hexdigest()[:32]}:{window}"
    pipe = redis.pipeline(transaction=False)
    pipe.incr(name)
    pipe.expire(name, window_s + 1)
    count = pipe.execute()[0]
    if count <= limit:
        return None
    return max(1, int((window + 1) * window_s - now + 0.999))
