"""The callback dispatcher: `python -m worker --callbacks`, a process of its own that never runs
inference. It sends the outbox (shared.outbox) with many small concurrent posts.

Dispatcher(settings).run(stop) loops until stop is set: claim due rows (as many as free threads),
take a delivery slot of the row's tenant (TenantSlots: at most callback_tenant_concurrency posts
per tenant across every dispatcher, a Redis sorted set per tenant whose entries expire), and post
in a thread pool of callback_concurrency. A tenant with every slot taken is skipped for a while,
its rows put back: a slow receiver only slows its own tenant's callbacks.
attempt(row) -> the row's new status: delivered; pending (retried after backoff_s); failed
    (callback_max_attempts reached, the URL refused, or the job gone).
Each post carries the job JSON, signed for its tenant, with the row's id as webhook-id: the same
on every attempt, so receivers de-duplicate on it (delivery is at least once).
"""

import logging
import tempfile
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from shared import outbox
from shared.callback_guard import CallbackRefused, allowed_networks, check_callback_url
from shared.db.models import Job
from shared.db.session import session_scope
from shared.jobs import job_json
from shared.settings import Settings
from shared.webhooks import signed_headers, signing_secrets
from worker.batch import is_transient
from worker.callbacks import CallbackFailed, backoff_s, encode, post_pinned

log = logging.getLogger(__name__)

SLOTS_PREFIX = "biofleet:callback-slots:"
BUSY_TENANT_S = 1.0  # a tenant with no free slot is not claimed for this long
LEASE_MARGIN_S = 30.0  # a claimed row is hidden for the deadline plus this
# Touched on every turn of the loop: the liveness probe checks its age (infra/k8s/callbacks.yaml).
HEARTBEAT_FILE = Path(tempfile.gettempdir()) / "biofleet-callbacks.alive"

_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""


class TenantSlots:
    """At most `cap` deliveries in flight per tenant: fleet-wide through Redis, and in this process
    alone while Redis is away. A slot held by a dead dispatcher expires after ttl_s."""

    def __init__(self, redis_client, cap: int, ttl_s: float):
        self.redis = redis_client
        self.cap = cap
        self.ttl_s = ttl_s
        self.local: dict[uuid.UUID, int] = {}
        self.lock = threading.Lock()
        self.script = redis_client.register_script(_ACQUIRE) if redis_client is not None else None

    def acquire(self, tenant_id: uuid.UUID, delivery_id: str) -> bool:
        with self.lock:
            if self.local.get(tenant_id, 0) >= self.cap:
                return False
            if self.script is not None:
                try:
                    if not self.script(keys=[SLOTS_PREFIX + str(tenant_id)], args=[self.cap, self.ttl_s, delivery_id]):
                        return False
                except Exception as exc:
                    log.warning("callback slots unavailable, counting locally", extra={"error": type(exc).__name__})
            self.local[tenant_id] = self.local.get(tenant_id, 0) + 1
            return True

    def release(self, tenant_id: uuid.UUID, delivery_id: str) -> None:
        with self.lock:
            self.local[tenant_id] = max(0, self.local.get(tenant_id, 0) - 1)
        if self.redis is not None:
            try:
                self.redis.zrem(SLOTS_PREFIX + str(tenant_id), delivery_id)
            except Exception:
                pass  # it expires


class Dispatcher:
    def __init__(self, settings: Settings, database_url: str, redis_client=None):
        self.settings = settings
        self.database_url = database_url
        lease_s = settings.callback_deadline_s + LEASE_MARGIN_S
        self.lease_s = lease_s
        self.slots = TenantSlots(redis_client, settings.callback_tenant_concurrency, lease_s)
        self.allowed = allowed_networks(settings.callback_allowed_networks)
        self.busy: dict[uuid.UUID, float] = {}  # tenant -> skipped until (monotonic)

    def run(self, stop: threading.Event) -> None:
        settings = self.settings
        in_flight = set()
        with ThreadPoolExecutor(settings.callback_concurrency, thread_name_prefix="callback") as pool:
            while not stop.is_set():
                self.beat()
                free = settings.callback_concurrency - len(in_flight)
                for row in self._claim(free) if free > 0 else []:
                    if not self.slots.acquire(row.tenant_id, row.id):
                        self.busy[row.tenant_id] = time.monotonic() + BUSY_TENANT_S
                        self._quietly(lambda s, r=row: outbox.put_back(s, r.id, BUSY_TENANT_S))
                        continue
                    in_flight.add(pool.submit(self._attempt_and_release, row))
                if in_flight:
                    _, in_flight = wait(
                        in_flight, timeout=settings.callback_poll_interval_s, return_when=FIRST_COMPLETED
                    )
                else:
                    stop.wait(settings.callback_poll_interval_s)
            wait(in_flight)

    def beat(self) -> None:
        try:
            HEARTBEAT_FILE.touch()
        except OSError:
            pass

    def _claim(self, limit: int) -> list:
        now = time.monotonic()
        self.busy = {tenant: until for tenant, until in self.busy.items() if until > now}
        try:
            with session_scope(self.database_url) as session:
                return outbox.claim(session, limit, self.lease_s, skip_tenants=list(self.busy))
        except Exception as exc:
            if not is_transient(exc):
                log.exception("claiming callbacks failed")
            else:
                log.warning("database unavailable, callbacks wait", extra={"error": type(exc).__name__})
            return []

    def _quietly(self, fn) -> None:
        try:
            with session_scope(self.database_url) as session:
                fn(session)
        except Exception as exc:  # the lease brings the row back
            log.warning("outbox update failed", extra={"error": type(exc).__name__})

    def _attempt_and_release(self, row) -> str:
        extra = {"job_id": str(row.job_id), "delivery_id": row.id}
        try:
            return self.attempt(row)
        except Exception as exc:  # the row stays pending; its lease brings it back
            if is_transient(exc):
                log.warning("database unavailable, callback waits", extra={**extra, "error": type(exc).__name__})
            else:
                log.exception("callback attempt failed", extra=extra)
            return "pending"
        finally:
            self.slots.release(row.tenant_id, row.id)

    def attempt(self, row) -> str:
        """One delivery attempt of an outbox row; its new status (see the module docstring)."""
        settings = self.settings
        extra = {"job_id": str(row.job_id), "delivery_id": row.id, "attempt": row.attempts + 1}
        with session_scope(self.database_url) as session:
            job = session.get(Job, row.job_id)
            if job is None:
                outbox.give_up(session, row.id, "the job no longer exists")
                return "failed"
            body = encode(job_json(job))
            secrets = signing_secrets(session, row.tenant_id)
        try:
            target = check_callback_url(row.url, self.allowed)
            status = post_pinned(target, row.url, body, signed_headers(secrets, row.id, body),
                                 settings.callback_deadline_s, settings.callback_max_response_bytes)  # fmt: skip
        except CallbackRefused as exc:
            log.warning("callback refused", extra={**extra, "error": str(exc)})
            self._quietly(lambda s: outbox.give_up(s, row.id, f"refused: {exc}"))
            return "failed"
        except CallbackFailed as exc:
            delay = backoff_s(row.attempts + 1)
            new = "pending"

            def record(session):
                nonlocal new
                new = outbox.retry_later(session, row.id, str(exc), settings.callback_max_attempts, delay)

            self._quietly(record)
            level = logging.ERROR if new == "failed" else logging.WARNING
            log.log(level, "callback failed" + (", abandoned" if new == "failed" else ", will retry"),
                    extra={**extra, "error": str(exc)})  # fmt: skip
            return new
        self._quietly(lambda s: outbox.delivered(s, row.id))
        log.info("callback delivered", extra={**extra, "http_status": status})
        return "delivered"


def main(settings: Settings) -> None:
    """Run a dispatcher until SIGTERM or SIGINT."""
    import signal

    import redis as redis_lib

    from shared.services import resolve

    urls = resolve(settings)
    client = redis_lib.Redis.from_url(urls.redis_url, socket_connect_timeout=2, socket_timeout=2)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("callback dispatcher started", extra={"concurrency": settings.callback_concurrency,
                                                   "tenant_concurrency": settings.callback_tenant_concurrency})  # fmt: skip
    Dispatcher(settings, urls.database_url, client).run(stop)
    log.info("callback dispatcher stopped")
