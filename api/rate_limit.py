"""Fixed window counters in Redis, shared by every API process.

check_both(redis, address, key, ...) -> (address Retry-After | None, key Retry-After | None): the
failed authentications of the client address (read, not counted) and the key's requests (this one
counted), each in its fixed window, in one round trip; None while under the limit, else the
seconds until the window ends. count_failure(redis, address, window_s, now=None) counts one failed
authentication. Redis keys hold hashes of API keys and addresses, never them.
"""

import hashlib
import time

PREFIX = "biofleet:rate:"
FAILURE_PREFIX = "biofleet:authfail:"


def _name(prefix: str, subject: str, window: int) -> str:
    return f"{prefix}{hashlib.sha256(subject.encode()).hexdigest()[:32]}:{window}"


def _retry(window: int, window_s: int, now: float) -> int:
    return max(1, int((window + 1) * window_s - now + 0.999))


def count_failure(redis, address: str, window_s: int, now: float | None = None) -> None:
    """Count one failed authentication of address in the current window."""
    now = time.time() if now is None else now
    name = _name(FAILURE_PREFIX, address, int(now // window_s))
    pipe = redis.pipeline(transaction=False)
    pipe.incr(name)
    pipe.expire(name, window_s + 1)
    pipe.execute()


def check_both(
    redis,
    address: str,
    key: str | None,
    failure_limit: int,
    failure_window_s: int,
    rate_limit: int,
    rate_window_s: int,
    now: float | None = None,
) -> tuple[int | None, int | None]:
    """The address check (when failure_limit) and the key's count (when rate_limit and a key) in one
    pipeline: (Retry-After of the address or None, Retry-After of the key or None)."""
    now = time.time() if now is None else now
    pipe = redis.pipeline(transaction=False)
    if failure_limit:
        pipe.get(_name(FAILURE_PREFIX, address, int(now // failure_window_s)))
    if rate_limit and key:
        name = _name(PREFIX, key, int(now // rate_window_s))
        pipe.incr(name)
        pipe.expire(name, rate_window_s + 1)
    if not len(pipe):
        return None, None
    replies = pipe.execute()
    address_retry = key_retry = None
    if failure_limit:
        failures = int(replies.pop(0) or 0)
        if failures >= failure_limit:
            address_retry = _retry(int(now // failure_window_s), failure_window_s, now)
    if rate_limit and key and replies[0] > rate_limit:
        key_retry = _retry(int(now // rate_window_s), rate_window_s, now)
    return address_retry, key_retry
