"""Signed result callbacks: a POST of the job JSON (shared.jobs.job_json, as GET /v1/jobs/{id}
answers) to the job's callback_url once it is final.

sign(secret, timestamp, body) -> "sha256=<hex>", the HMAC-SHA256 of "<timestamp>.<body>".
signed_headers(secret, body, timestamp=None) -> the request headers.
post_signed(url, body, secret, timeout_s) -> HTTP status; CallbackFailed unless 2xx.
deliver(job_id, settings) -> True when posted, False when there is nothing to post or the URL
    is refused (shared.callback_guard: private networks unless settings.callback_allowed_networks).
backoff_s(attempt) -> seconds to wait before retry number `attempt` (1, 2, ...).
"""

import hashlib
import hmac
import json
import logging
import time
import uuid

import httpx

from shared.callback_guard import CallbackRefused, allowed_networks, check_callback_url
from shared.db.models import FINAL_STATUSES, Job
from shared.jobs import job_json
from shared.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Biofleet-Signature"
TIMESTAMP_HEADER = "X-Biofleet-Timestamp"


class CallbackFailed(RuntimeError):
    """The receiver did not answer 2xx, or could not be reached."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return "sha256=" + digest


def signed_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: sign(secret, stamp, body),
    }


def encode(payload: dict) -> bytes:
    """Compact JSON bytes: exactly what is signed and sent."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def post_signed(url: str, body: bytes, secret: str, timeout_s: float) -> int:
    """POST body to url with the signature headers; the status code, or CallbackFailed."""
    try:
        response = httpx.post(url, content=body, headers=signed_headers(secret, body), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise CallbackFailed(f"{type(exc).__name__}: {exc}") from None
    if not 200 <= response.status_code < 300:
        raise CallbackFailed(f"receiver answered HTTP {response.status_code}")
    return response.status_code


def deliver(job_id: str, settings: Settings) -> bool:
    """Post the final job `job_id` to its callback_url. False when the job is unknown, not final,
    or has no callback_url; CallbackFailed when the post fails."""
    from shared.db.session import session_scope
    from shared.services import resolve

    with session_scope(resolve(settings).database_url) as session:
        job = session.get(Job, uuid.UUID(job_id))
        if job is None or job.status not in FINAL_STATUSES or not job.callback_url:
            return False
        url, payload = job.callback_url, job_json(job)
    try:
        check_callback_url(url, allowed_networks(settings.callback_allowed_networks))
    except CallbackRefused as exc:
        log.warning("callback refused", extra={"job_id": job_id, "error": str(exc)})
        return False
    status = post_signed(url, encode(payload), settings.callback_secret, settings.callback_timeout_s)
    log.info("callback posted", extra={"job_id": job_id, "http_status": status})
    return True


def backoff_s(attempt: int, base_s: float = 2.0, cap_s: float = 300.0) -> float:
    """Exponential backoff: base_s, 2 base_s, 4 base_s, ... capped at cap_s."""
    return min(cap_s, base_s * 2 ** max(0, attempt - 1))
