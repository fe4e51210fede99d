"""verify_webhook(body, headers, secret): check a biofleet callback (Standard Webhooks signatures:
HMAC-SHA256 over "<webhook-id>.<webhook-timestamp>.<body>", keyed by the base64 part of the
tenant's "whsec_..." secret) and return the job it carries."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence

from biofleet_client.errors import WebhookVerificationError
from biofleet_client.models import AnyJob, parse_job

SECRET_PREFIX = "whsec_"
TOLERANCE_S = 300  # how far webhook-timestamp may be from now, either way


def _key(secret: str) -> bytes:
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret is not whsec_<base64>") from None


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The "v1,<base64>" signature of body with secret."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), content, hashlib.sha256).digest()).decode()


def _fail(message: str) -> WebhookVerificationError:
    return WebhookVerificationError("bad_signature", message)


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> AnyJob:
    """The job of a callback whose signature verifies with secret (or any of several secrets, as
    during a rotation); WebhookVerificationError otherwise. Pass the raw body, unparsed."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lower = {name.lower(): value for name, value in headers.items()}
    webhook_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    if not webhook_id or not stamp or not signatures:
        raise _fail("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise _fail("webhook-timestamp is not an integer") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise _fail("webhook-timestamp is outside the tolerance")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    expected = {sign(one, webhook_id, timestamp, raw) for one in secrets}
    given = signatures.split(" ")
    if not any(hmac.compare_digest(mine, theirs) for mine in expected for theirs in given):
        raise _fail("no signature matches")
    return parse_job(json.loads(raw))
