"""Per-tenant webhook signing secrets and Standard Webhooks signatures (PyPI standardwebhooks).

new_secret() -> "whsec_<base64 of 32 random bytes>".
ensure_secret(session, tenant_id) -> the tenant's current secret, created when it has none.
rotate_secret(session, tenant_name, grace_s) -> the new secret; the old one keeps signing for grace_s.
signing_secrets(session, tenant_id) -> the secrets that sign now: the current one, and the
    previous one while its grace period lasts.
signed_headers(secrets, delivery_id, body, timestamp=None) -> webhook-id, webhook-timestamp and
    webhook-signature ("v1,<base64>" per secret, space-separated).
The caller owns the transaction.
"""

import base64
import secrets as random
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.db.models import Tenant

SECRET_PREFIX = "whsec_"


class UnknownTenant(LookupError):
    """No tenant of that name."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(random.token_bytes(32)).decode()


def ensure_secret(session: Session, tenant_id: uuid.UUID) -> str:
    """The current secret of the tenant, created if missing (safe under concurrent callers)."""
    session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.webhook_secret.is_(None))
        .values(webhook_secret=new_secret())
    )
    return session.execute(select(Tenant.webhook_secret).where(Tenant.id == tenant_id)).scalar_one()


def rotate_secret(session: Session, tenant_name: str, grace_s: float) -> str:
    """A new current secret for the tenant; the one it replaces signs too for grace_s seconds."""
    tenant = session.execute(select(Tenant).where(Tenant.name == tenant_name).with_for_update()).scalar_one_or_none()
    if tenant is None:
        raise UnknownTenant(tenant_name)
    secret = new_secret()
    if tenant.webhook_secret:
        tenant.previous_webhook_secret = tenant.webhook_secret
        tenant.previous_secret_expires_at = func.now() + timedelta(seconds=grace_s)
    tenant.webhook_secret = secret
    session.flush()
    return secret


def signing_secrets(session: Session, tenant_id: uuid.UUID) -> list[str]:
    """[current] or [current, previous] while the previous one is in its grace period."""
    current = ensure_secret(session, tenant_id)
    previous = session.execute(
        select(Tenant.previous_webhook_secret).where(
            Tenant.id == tenant_id, Tenant.previous_secret_expires_at > func.now()
        )
    ).scalar_one_or_none()
    return [current, previous] if previous else [current]


def signed_headers(secrets: list[str], delivery_id: str, body: bytes, timestamp: datetime | None = None) -> dict:
    """The Standard Webhooks headers for body, signed with every secret in secrets."""
    from standardwebhooks.webhooks import Webhook

    stamp = timestamp or datetime.now(UTC)
    signatures = [Webhook(secret).sign(delivery_id, stamp, body.decode()) for secret in secrets]
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
